//! Finding tracefs and reading a tracepoint's id and record layout from its `format` file, so
//! field offsets come from the running kernel instead of being compiled in.

use std::fs;
use std::path::{Path, PathBuf};

use crate::TraceError;

/// Where tracefs is usually mounted (the first is the modern place, the second the debugfs one).
const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// One field of a tracepoint record, as the `format` file describes it:
/// `field:__u16 sport;<TAB>offset:24;<TAB>size:2;<TAB>signed:0;`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field name without type or array suffix (`saddr` for `__u8 saddr[4]`).
    pub name: String,
    /// Byte offset from the start of the raw record (which starts with `common_type`).
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
    /// Whether the field is signed.
    pub signed: bool,
}

/// A tracepoint's id (the `common_type` value and `perf_event_attr.config`) and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFormat {
    /// `name:` line.
    pub name: String,
    /// `ID:` line.
    pub id: u16,
    /// Every `field:` line, common fields included.
    pub fields: Vec<Field>,
}

impl EventFormat {
    /// Parses the text of `events/<system>/<event>/format`.
    ///
    /// # Errors
    /// [`TraceError::Format`] when the `ID:` line is missing or a field line is malformed.
    pub fn parse(text: &str) -> Result<EventFormat, TraceError> {
        let mut name = String::new();
        let mut id = None;
        let mut fields = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("name:") {
                name = rest.trim().to_string();
            } else if let Some(rest) = line.strip_prefix("ID:") {
                id = rest.trim().parse::<u16>().ok();
            } else if line.starts_with("field:") {
                fields.push(parse_field(line).ok_or_else(|| {
                    TraceError::Format(format!("cannot read field line '{line}' of {name}"))
                })?);
            }
        }
        let id = id.ok_or_else(|| TraceError::Format(format!("no ID line in format of {name}")))?;
        Ok(EventFormat { name, id, fields })
    }

    /// The field called `name`, checked to be `size` bytes long.
    ///
    /// # Errors
    /// [`TraceError::Format`] naming the tracepoint and field when absent or of another size.
    pub fn field(&self, name: &str, size: usize) -> Result<usize, TraceError> {
        let field = self
            .fields
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| TraceError::Format(format!("{} has no field {name}", self.name)))?;
        if field.size != size {
            return Err(TraceError::Format(format!(
                "{}.{name} is {} bytes, expected {size}",
                self.name, field.size
            )));
        }
        Ok(field.offset)
    }
}

/// `field:unsigned short common_type; offset:0; size:2; signed:0;`
fn parse_field(line: &str) -> Option<Field> {
    let mut decl = None;
    let mut offset = None;
    let mut size = None;
    let mut signed = false;
    for part in line.split(';') {
        let part = part.trim();
        if let Some(rest) = part.strip_prefix("field:") {
            decl = Some(rest.trim());
        } else if let Some(rest) = part.strip_prefix("offset:") {
            offset = rest.trim().parse().ok();
        } else if let Some(rest) = part.strip_prefix("size:") {
            size = rest.trim().parse().ok();
        } else if let Some(rest) = part.strip_prefix("signed:") {
            signed = rest.trim() == "1";
        }
    }
    // The name is the last word of the declaration, without an array suffix.
    let last = decl?.split_whitespace().last()?;
    let name = last.split('[').next()?.trim_start_matches('*');
    if name.is_empty() {
        return None;
    }
    Some(Field {
        name: name.to_string(),
        offset: offset?,
        size: size?,
        signed,
    })
}

/// A mounted tracefs.
#[derive(Debug, Clone)]
pub struct TraceFs {
    root: PathBuf,
}

impl TraceFs {
    /// Finds a mounted tracefs; when none is mounted, mounts one on `/sys/kernel/tracing` (as
    /// `perf` does, tools/lib/api/fs/tracing_path.c), which needs root.
    ///
    /// # Errors
    /// [`TraceError::PermissionDenied`] when tracefs exists but cannot be read,
    /// [`TraceError::NoTracefs`] when it is neither mounted nor mountable.
    pub fn open() -> Result<TraceFs, TraceError> {
        for dir in TRACEFS_DIRS {
            let root = Path::new(dir);
            match fs::metadata(root.join("events")) {
                Ok(_) => return Ok(TraceFs { root: root.into() }),
                Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
                    return Err(TraceError::PermissionDenied(format!("reading {dir}")));
                }
                Err(_) => {}
            }
        }
        mount_tracefs(TRACEFS_DIRS[0])?;
        Ok(TraceFs {
            root: TRACEFS_DIRS[0].into(),
        })
    }

    /// Reads and parses `events/<system>/<event>/format`.
    ///
    /// # Errors
    /// [`TraceError::PermissionDenied`] or [`TraceError::MissingTracepoint`] (kernel built
    /// without it), or a malformed file.
    pub fn event(&self, system: &str, event: &str) -> Result<EventFormat, TraceError> {
        let path = self
            .root
            .join("events")
            .join(system)
            .join(event)
            .join("format");
        match fs::read_to_string(&path) {
            Ok(text) => EventFormat::parse(&text),
            Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => Err(
                TraceError::PermissionDenied(format!("reading {}", path.display())),
            ),
            Err(_) => Err(TraceError::MissingTracepoint(format!("{system}:{event}"))),
        }
    }
}

fn mount_tracefs(dir: &str) -> Result<(), TraceError> {
    let target = std::ffi::CString::new(dir).map_err(|_| TraceError::NoTracefs)?;
    let fstype = c"tracefs";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be NULL.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 && Path::new(dir).join("events").exists() {
        return Ok(());
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => Err(TraceError::PermissionDenied(format!(
            "mounting tracefs on {dir}"
        ))),
        _ => Err(TraceError::NoTracefs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sock/inet_sock_set_state/format` as Linux 6.18 prints it (print fmt shortened).
    const SET_STATE: &str = "name: inet_sock_set_state
ID: 2287
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s sport=%hu\", REC->family
";

    #[test]
    fn parses_the_kernels_format_file() {
        let f = EventFormat::parse(SET_STATE).unwrap();
        assert_eq!(f.name, "inet_sock_set_state");
        assert_eq!(f.id, 2287);
        assert_eq!(f.fields.len(), 15);
        assert_eq!(f.field("skaddr", 8).unwrap(), 8);
        assert_eq!(f.field("daddr_v6", 16).unwrap(), 56);
        assert_eq!(f.field("common_pid", 4).unwrap(), 4);
        assert!(f.fields.iter().any(|x| x.name == "oldstate" && x.signed));
    }

    #[test]
    fn wrong_size_or_missing_field_is_an_error() {
        let f = EventFormat::parse(SET_STATE).unwrap();
        assert!(f.field("sport", 4).is_err());
        assert!(f.field("nosuch", 2).is_err());
        assert!(EventFormat::parse("name: x\nformat:\n").is_err());
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(text in "(?s).{0,400}") {
            let _ = EventFormat::parse(&text);
        }

        #[test]
        fn field_lines_round_trip(name in "[a-z_][a-z0-9_]{0,12}", offset in 0usize..4096, size in 1usize..64) {
            let text = format!("name: t\nID: 7\n\tfield:__u8 {name}[{size}];\toffset:{offset};\tsize:{size};\tsigned:0;\n");
            let f = EventFormat::parse(&text).unwrap();
            proptest::prop_assert_eq!(f.field(&name, size).unwrap(), offset);
        }
    }
}
