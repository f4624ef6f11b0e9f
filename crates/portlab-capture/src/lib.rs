//! # portlab-capture
//!
//! Reads the text people capture where portlab cannot run — a Windows server, a Mac, a
//! production Linux box — and turns it into the port-pool view `portlab ports` gives of a
//! live host: socket tables (`netstat -ano[bq]`, `Get-NetTCPConnection` as table, CSV or
//! JSON, macOS `netstat -anv[W]`, `ss -tan`, Linux `netstat -tan`, `/proc/net/tcp[6]`),
//! settings (`netsh … dynamicport`, `excludedportrange`, `portproxy`, `Get-NetTCPSetting`,
//! `reg query`, `sysctl`), Windows Tcpip events 4227/4231, and the error lines of load testers
//! and runtimes mapped to [`portlab_load::ErrorClass`] with the OS their numbers prove.
//!
//! Main types: [`read_capture`] → [`FileCapture`] per file; [`analyze`] → [`Analysis`] with
//! settings (as captured, and what was assumed), pools in the OS's scope (one host-wide pool
//! on Windows and macOS, one per 4-tuple on Linux via `portlab_sockets::Snapshot`), headroom,
//! a timeline over snapshots and the error summary. Input is streamed line by line; the
//! encoding (UTF-8, UTF-16LE/BE with BOM, OEM code pages) is sniffed ([`decode`]).
//! Nothing here prints.
//!
//! ```
//! use portlab_capture::{analyze, read_capture, AnalyzeOptions};
//! let text = "  TCP    10.0.0.5:50001   10.0.0.9:80   TIME_WAIT   0\r\n";
//! let capture = read_capture("netstat.txt", text.as_bytes(), None, None)?;
//! let analysis = analyze(vec![capture], &AnalyzeOptions::default())?;
//! assert_eq!(analysis.pools[0].time_wait, 1);
//! # Ok::<(), portlab_capture::CaptureError>(())
//! ```
#![warn(missing_docs)]

pub mod decode;
pub mod errors;
pub mod reader;
pub mod report;
pub mod row;
pub mod settings;
pub mod snapshot;
pub mod tables;
pub mod timestamp;

use std::io::Read;

use serde::Serialize;

pub use decode::TextEncoding;
pub use reader::{EventCounts, FileCapture};
pub use report::{analyze, Analysis, AnalyzeOptions, PoolReport};
pub use row::CapState;

/// The OS a capture came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceOs {
    /// Windows (Vista / Server 2008 or later).
    Windows,
    /// macOS.
    Macos,
    /// Linux.
    Linux,
}

impl SourceOs {
    /// Parses `windows`, `macos`, `linux`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "windows" | "win" => Some(SourceOs::Windows),
            "macos" | "mac" | "darwin" | "osx" => Some(SourceOs::Macos),
            "linux" => Some(SourceOs::Linux),
            _ => None,
        }
    }

    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            SourceOs::Windows => "Windows",
            SourceOs::Macos => "macOS",
            SourceOs::Linux => "Linux",
        }
    }
}

/// A capture format (`--format NAME` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Windows `netstat -an[o][b][q]`.
    WindowsNetstat,
    /// `Get-NetTCPConnection` default table.
    GetNetTcpTable,
    /// `Get-NetTCPConnection | Export-Csv`.
    GetNetTcpCsv,
    /// `Get-NetTCPConnection | ConvertTo-Json`.
    GetNetTcpJson,
    /// `netsh int ipv4|ipv6 show dynamicport tcp`.
    NetshDynamicPort,
    /// `netsh int ipv4 show excludedportrange protocol=tcp`.
    NetshExcluded,
    /// `netsh interface portproxy show all`.
    NetshPortProxy,
    /// `Get-NetTCPSetting` (list or JSON).
    GetNetTcpSetting,
    /// `reg query HKLM\SYSTEM\CurrentControlSet\Services\Tcpip\Parameters`.
    RegQuery,
    /// Windows Tcpip events 4227/4231 (text or `Get-WinEvent | ConvertTo-Json`).
    WindowsEvents,
    /// macOS `netstat -an[v][W] -p tcp`.
    MacosNetstat,
    /// macOS `sysctl net.inet.…`.
    MacosSysctl,
    /// Linux `ss -tan[po]`.
    Ss,
    /// Linux `netstat -tan[p]`.
    LinuxNetstat,
    /// Linux `/proc/net/tcp` and `/proc/net/tcp6`.
    ProcNetTcp,
    /// Linux `sysctl net.ipv4.…`.
    LinuxSysctl,
    /// Error output of load testers, runtimes and proxies.
    ErrorLines,
}

impl Format {
    /// Row formats, in the order they are tried.
    pub const ROW_FORMATS: [Format; 6] = [
        Format::WindowsNetstat,
        Format::Ss,
        Format::MacosNetstat,
        Format::LinuxNetstat,
        Format::ProcNetTcp,
        Format::GetNetTcpTable,
    ];

    /// All formats.
    pub const ALL: [Format; 17] = [
        Format::WindowsNetstat,
        Format::GetNetTcpTable,
        Format::GetNetTcpCsv,
        Format::GetNetTcpJson,
        Format::NetshDynamicPort,
        Format::NetshExcluded,
        Format::NetshPortProxy,
        Format::GetNetTcpSetting,
        Format::RegQuery,
        Format::WindowsEvents,
        Format::MacosNetstat,
        Format::MacosSysctl,
        Format::Ss,
        Format::LinuxNetstat,
        Format::ProcNetTcp,
        Format::LinuxSysctl,
        Format::ErrorLines,
    ];

    /// The `--format` name.
    pub fn name(self) -> &'static str {
        match self {
            Format::WindowsNetstat => "windows-netstat",
            Format::GetNetTcpTable => "get-nettcpconnection",
            Format::GetNetTcpCsv => "get-nettcpconnection-csv",
            Format::GetNetTcpJson => "get-nettcpconnection-json",
            Format::NetshDynamicPort => "netsh-dynamicport",
            Format::NetshExcluded => "netsh-excludedportrange",
            Format::NetshPortProxy => "netsh-portproxy",
            Format::GetNetTcpSetting => "get-nettcpsetting",
            Format::RegQuery => "reg-query",
            Format::WindowsEvents => "windows-events",
            Format::MacosNetstat => "macos-netstat",
            Format::MacosSysctl => "macos-sysctl",
            Format::Ss => "ss",
            Format::LinuxNetstat => "linux-netstat",
            Format::ProcNetTcp => "proc-net-tcp",
            Format::LinuxSysctl => "linux-sysctl",
            Format::ErrorLines => "error-lines",
        }
    }

    /// Parses a `--format` name.
    pub fn from_name(name: &str) -> Option<Self> {
        Format::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The OS this format proves (error lines prove none by themselves).
    pub fn os(self) -> SourceOs {
        match self {
            Format::MacosNetstat | Format::MacosSysctl => SourceOs::Macos,
            Format::Ss | Format::LinuxNetstat | Format::ProcNetTcp | Format::LinuxSysctl => {
                SourceOs::Linux
            }
            _ => SourceOs::Windows,
        }
    }

    /// Whether the format is a socket table.
    pub fn is_table(self) -> bool {
        Format::ROW_FORMATS.contains(&self)
            || matches!(self, Format::GetNetTcpCsv | Format::GetNetTcpJson)
    }
}

/// Why a capture could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The file could not be opened or read.
    #[error("{file}: {source}")]
    Read {
        /// The file.
        file: String,
        /// What went wrong.
        source: decode::DecodeError,
    },
    /// The file is empty.
    #[error("{file}: empty file; expected the text output of netstat, ss, Get-NetTCPConnection, netsh or a load tester")]
    Empty {
        /// The file.
        file: String,
    },
    /// Nothing in the file was a known format.
    #[error("{file}: no socket table, setting or error line found ({lines} lines, first: {first:?}); expected netstat -ano, Get-NetTCPConnection, ss -tan, netsh or load-tester output (see portlab analyze --how windows)")]
    NothingReadable {
        /// The file.
        file: String,
        /// Lines read.
        lines: u64,
        /// Its first non-blank line.
        first: String,
    },
}

/// Reads one capture (a file's bytes, or stdin) into what it holds.
///
/// # Errors
/// [`CaptureError`] when the input cannot be read, is binary or empty, or holds nothing of a
/// known format.
pub fn read_capture<R: Read>(
    file: &str,
    input: R,
    format: Option<Format>,
    encoding: Option<TextEncoding>,
) -> Result<FileCapture, CaptureError> {
    let mut reader = reader::Reader::new(file, format);
    let mut first = String::new();
    let (encoding_used, stats) = decode::for_each_line(input, encoding, |line| {
        if first.is_empty() && !line.trim().is_empty() {
            first = line.trim().chars().take(80).collect();
        }
        reader.line(line);
    })
    .map_err(|source| CaptureError::Read {
        file: file.to_string(),
        source,
    })?;
    let mut capture = reader.finish();
    capture.encoding = Some(encoding_used);
    capture.lines = stats.lines;
    capture.cut_lines = stats.cut_lines;
    if stats.bytes == 0 || first.is_empty() {
        return Err(CaptureError::Empty {
            file: file.to_string(),
        });
    }
    if capture.formats.is_empty() && capture.unclassified.0 == 0 {
        return Err(CaptureError::NothingReadable {
            file: file.to_string(),
            lines: stats.lines,
            first,
        });
    }
    Ok(capture)
}
