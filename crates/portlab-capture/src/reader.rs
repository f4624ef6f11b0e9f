//! The per-file reader: every line goes to the parser of the section it belongs to. Socket
//! rows identify themselves (`  TCP …`, `tcp4 …`, `ESTAB …`, `0: 0100007F:…`); netsh's
//! sections are told apart by their dash lines (1 group: dynamicport, 2: excludedportrange,
//! 4: portproxy); JSON is collected object by object. A new snapshot starts when rows follow
//! a blank line, a title or a timestamp after earlier rows (Microsoft's own capture loop
//! writes `%date% %time%` then `netstat -ano`, research/captures.md §1.7).

use std::collections::BTreeSet;

use crate::errors::{self, ErrorHit};
use crate::row::{CapState, RowProblem};
use crate::settings::{self, CapturedSettings};
use crate::snapshot::CapturedTable;
use crate::tables::{self, CsvColumns, RowResult};
use crate::{timestamp, Format};

/// Largest JSON object collected (bigger ones are dropped and counted).
const MAX_JSON_OBJECT: usize = 1 << 20;
/// Destinations and processes kept per finished snapshot.
const KEEP_TOP: usize = 10;
/// Example lines kept for the report.
const MAX_EXAMPLES: usize = 20;

/// Windows event IDs counted: 4227 (TIME_WAIT collision), 4231 (global port space exhausted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EventCounts {
    /// Tcpip event 4227.
    pub event_4227: u64,
    /// Tcpip event 4231.
    pub event_4231: u64,
}

/// What one file held.
#[derive(Debug)]
pub struct FileCapture {
    /// The file name as given (`-` for stdin).
    pub file: String,
    /// Formats found in it.
    pub formats: BTreeSet<Format>,
    /// Socket tables, in order.
    pub tables: Vec<CapturedTable>,
    /// Settings found.
    pub settings: CapturedSettings,
    /// Classified error lines, one entry per (class, code, call, IPv6 loopback): the hit with
    /// the failures summed, the first line, the number of lines.
    pub errors: Vec<(ErrorHit, String, u64)>,
    /// Error-like lines no rule classified: count and the first ones.
    pub unclassified: (u64, Vec<String>),
    /// Lines of no known format: count and the first ones.
    pub other_lines: (u64, Vec<String>),
    /// Windows Tcpip events.
    pub events: EventCounts,
    /// JSON objects dropped (malformed or too big).
    pub bad_json_objects: u64,
    /// The encoding the file was read with.
    pub encoding: Option<crate::TextEncoding>,
    /// Lines read.
    pub lines: u64,
    /// Lines cut at the maximum length.
    pub cut_lines: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    None,
    /// After a netsh title and a one-group dash line: the next two `…: N` lines.
    DynamicPort {
        ipv6: bool,
        start: Option<u16>,
    },
    Excluded,
    PortProxy,
}

/// Collects a JSON document object by object.
#[derive(Debug, Default)]
struct JsonCollector {
    active: bool,
    depth: i32,
    /// Depth at which collected objects start (1 inside a top-level array, 0 for a bare object).
    object_depth: i32,
    in_string: bool,
    escaped: bool,
    current: String,
    collecting: bool,
    too_big: bool,
}

/// Reads one file's lines.
pub struct Reader {
    out: FileCapture,
    forced: Option<Format>,
    current: Option<CapturedTable>,
    gap: bool,
    pending_time: Option<(f64, String)>,
    last_row_format: Option<Format>,
    section: Section,
    next_dynamic_is_v6: bool,
    csv: Option<CsvColumns>,
    in_error_block: bool,
    macos_addr_width: usize,
    json: JsonCollector,
    last_windows_pid: Option<u32>,
    /// `-b` owner lines still expected under the last Windows row (0–2 of them).
    owner_lines_left: u8,
}

impl Reader {
    /// A reader for `file`; `forced` limits it to one format.
    pub fn new(file: &str, forced: Option<Format>) -> Self {
        Reader {
            out: FileCapture {
                file: file.to_string(),
                formats: BTreeSet::new(),
                tables: Vec::new(),
                settings: CapturedSettings::default(),
                errors: Vec::new(),
                unclassified: (0, Vec::new()),
                other_lines: (0, Vec::new()),
                events: EventCounts::default(),
                bad_json_objects: 0,
                encoding: None,
                lines: 0,
                cut_lines: 0,
            },
            forced,
            current: None,
            gap: false,
            pending_time: None,
            last_row_format: None,
            section: Section::None,
            next_dynamic_is_v6: false,
            csv: None,
            in_error_block: false,
            macos_addr_width: 22,
            json: JsonCollector::default(),
            last_windows_pid: None,
            owner_lines_left: 0,
        }
    }

    fn allowed(&self, f: Format) -> bool {
        self.forced.is_none_or(|forced| forced == f)
    }

    /// Reads one line.
    pub fn line(&mut self, line: &str) {
        if self.json.active {
            self.json_line(line);
            return;
        }
        let t = line.trim();
        if t.is_empty() {
            self.blank();
            return;
        }
        if self.starts_json(t) {
            self.json = JsonCollector {
                active: true,
                ..JsonCollector::default()
            };
            self.json_line(line);
            return;
        }
        // At most 24 tokens: every format's fields are among the first ones (the rest of a
        // longer line, such as an ss process column, is not needed).
        let mut buf = [""; 24];
        let mut n = 0;
        for tok in t.split_whitespace().take(buf.len()) {
            buf[n] = tok;
            n += 1;
        }
        let tokens = &buf[..n];
        let owner_lines_left = std::mem::take(&mut self.owner_lines_left);
        if self.try_row(t, tokens) {
            return;
        }
        if owner_lines_left > 0 && self.try_windows_owner(line, t) {
            self.owner_lines_left = owner_lines_left - 1;
            return;
        }
        if self.try_section(line, t, tokens) {
            return;
        }
        if self.try_headers(t) {
            return;
        }
        if let Some(kind) = self.out.settings.read_line(t) {
            let f = match kind {
                settings::SettingLine::Macos => Format::MacosSysctl,
                settings::SettingLine::Linux => Format::LinuxSysctl,
                settings::SettingLine::Registry => Format::RegQuery,
                settings::SettingLine::GetNetTcpSetting => Format::GetNetTcpSetting,
            };
            self.out.formats.insert(f);
            return;
        }
        if let Some(secs) = timestamp::parse(t) {
            self.pending_time = Some((secs, t.to_string()));
            self.set_gap();
            return;
        }
        if self.try_event(t) {
            return;
        }
        self.error_line(t);
    }

    fn blank(&mut self) {
        self.set_gap();
        self.in_error_block = false;
        if let Section::DynamicPort { start: None, .. } = self.section {
            return; // the dash line and the numbers may be apart by nothing but this
        }
        self.section = Section::None;
    }

    fn set_gap(&mut self) {
        if self.current.as_ref().is_some_and(|c| c.rows > 0) {
            self.gap = true;
        }
    }

    fn starts_json(&self, t: &str) -> bool {
        if !self.allowed(Format::GetNetTcpJson) && self.forced.is_some() {
            return false;
        }
        t == "[" || t == "{" || t.starts_with("[{") || t.starts_with("{\"") || t.starts_with("[ {")
    }

    fn try_row(&mut self, line: &str, tokens: &[&str]) -> bool {
        let width = self.macos_addr_width;
        let csv = self.csv;
        let parse = |f: Format| -> Option<RowResult> {
            match f {
                Format::WindowsNetstat => tables::windows_netstat(tokens),
                Format::Ss => tables::ss(tokens),
                Format::LinuxNetstat => tables::linux_netstat(tokens),
                Format::MacosNetstat => tables::macos_netstat(tokens, width),
                Format::ProcNetTcp => tables::proc_net_tcp(tokens),
                Format::GetNetTcpTable => tables::get_net_tcp_table(tokens),
                _ => None,
            }
        };
        let mut found = None;
        if let Some(f) = self.last_row_format {
            found = parse(f).map(|r| (f, r));
        }
        if found.is_none() {
            for f in Format::ROW_FORMATS {
                if self.allowed(f) {
                    if let Some(r) = parse(f) {
                        found = Some((f, r));
                        break;
                    }
                }
            }
        }
        if found.is_none() {
            if let Some(cols) = csv.filter(|_| self.allowed(Format::GetNetTcpCsv)) {
                if let Some(r) = cols.row(&tables::split_csv(line)) {
                    found = Some((Format::GetNetTcpCsv, r));
                }
            }
        }
        let Some((format, result)) = found else {
            return false;
        };
        self.last_row_format = Some(format);
        self.out.formats.insert(format);
        let table = self.table_for(format);
        match result {
            Ok(row) => {
                table.add(&row);
                if format == Format::WindowsNetstat {
                    self.last_windows_pid = row.pid;
                    self.owner_lines_left = 2;
                }
            }
            Err(RowProblem::Names) => table.named_rows += 1,
            Err(RowProblem::Udp) => table.udp_rows += 1,
        }
        true
    }

    /// The table rows of `format` go to: the current one, or a new one after a gap or a
    /// change of format.
    fn table_for(&mut self, format: Format) -> &mut CapturedTable {
        let start_new = match &self.current {
            None => true,
            Some(c) => c.rows > 0 && (self.gap || c.format != format),
        };
        if start_new {
            if let Some(mut done) = self.current.take() {
                if done.rows > 0 || done.named_rows > 0 || done.udp_rows > 0 {
                    done.seal(KEEP_TOP);
                    self.out.tables.push(done);
                }
            }
            let time = self.pending_time.take();
            self.current = Some(CapturedTable::new(&self.out.file, format, time));
        }
        self.gap = false;
        let table = self
            .current
            .get_or_insert_with(|| CapturedTable::new("", format, None));
        table.format = format;
        table
    }

    fn try_section(&mut self, line: &str, t: &str, tokens: &[&str]) -> bool {
        if t.chars().all(|c| c == '-' || c.is_whitespace()) && t.len() >= 3 {
            let groups = tokens.len();
            self.section = match groups {
                1 => Section::DynamicPort {
                    ipv6: std::mem::take(&mut self.next_dynamic_is_v6),
                    start: None,
                },
                2 => Section::Excluded,
                4 => Section::PortProxy,
                _ => Section::None,
            };
            return true;
        }
        let lower = t.to_ascii_lowercase();
        if lower.contains("show dynamicport") || lower.contains("show dynamic ") {
            self.next_dynamic_is_v6 = lower.contains("ipv6");
            return true;
        }
        match self.section {
            Section::DynamicPort { ipv6, start } => {
                if let Some(n) = settings::netsh_number(t) {
                    if self.allowed(Format::NetshDynamicPort) {
                        match start {
                            None => {
                                self.section = Section::DynamicPort {
                                    ipv6,
                                    start: Some(u16::try_from(n).unwrap_or(0)),
                                }
                            }
                            Some(s) => {
                                self.out.settings.set_netsh_dynamic(ipv6, s, n);
                                self.out.formats.insert(Format::NetshDynamicPort);
                                self.section = Section::None;
                            }
                        }
                        return true;
                    }
                }
            }
            Section::Excluded => {
                if let Some(r) = settings::excluded_row(tokens) {
                    if self.allowed(Format::NetshExcluded) {
                        self.out.settings.excluded.push(r);
                        self.out.formats.insert(Format::NetshExcluded);
                        return true;
                    }
                }
            }
            Section::PortProxy => {
                if let Some(r) = settings::portproxy_row(tokens) {
                    if self.allowed(Format::NetshPortProxy) {
                        self.out.settings.portproxy.push(r);
                        self.out.formats.insert(Format::NetshPortProxy);
                        return true;
                    }
                }
            }
            Section::None => {}
        }
        // netsh titles and notes: recognised so they are not "unknown lines".
        let _ = line;
        lower.starts_with("protocol tcp")
            || lower.starts_with("listen on ipv")
            || lower.starts_with("* - administered")
            || (lower.contains("port") && lower.contains("tcp") && tokens.len() <= 8 && !lower.contains(':'))
            // Column headers of netsh's tables, in any language: words only, one says port.
            || (tokens.len() <= 8
                && !t.chars().any(|c| c.is_ascii_digit() || matches!(c, ':' | '"' | ','))
                && ["port", "puerto", "porta", "порт"].iter().any(|w| lower.contains(w)))
    }

    fn try_headers(&mut self, t: &str) -> bool {
        if tables::is_windows_netstat_title(t) {
            self.set_gap();
            return true;
        }
        if t.starts_with("Active Internet connections") || t.starts_with("Active UNIX") {
            self.set_gap();
            return true;
        }
        if t.starts_with("Proto") && t.contains("Recv-Q") {
            if t.contains("(state)") && t.contains("Socket") {
                self.macos_addr_width = 18.max(self.macos_addr_width.min(22));
            }
            return true;
        }
        if t.starts_with("State") && t.contains("Recv-Q") || t.starts_with("Netid") {
            self.set_gap();
            return true;
        }
        if t.starts_with("sl") && t.contains("local_address") {
            // tcp6 after tcp (`cat /proc/net/tcp /proc/net/tcp6`) continues the snapshot.
            return true;
        }
        if t.starts_with("LocalAddress") && t.contains("RemotePort") {
            self.set_gap();
            return true;
        }
        if t.starts_with("#TYPE") {
            return true;
        }
        if t.starts_with('"') && t.contains("LocalPort") {
            self.csv = CsvColumns::from_header(&tables::split_csv(t));
            self.set_gap();
            return self.csv.is_some();
        }
        if t.starts_with("Error distribution") {
            self.in_error_block = true;
            return true;
        }
        false
    }

    fn try_event(&mut self, t: &str) -> bool {
        let lower = t.to_ascii_lowercase();
        let id = if lower.contains("global tcp port space") {
            Some(4231)
        } else if lower.contains("selected local endpoint was recently used") {
            Some(4227)
        } else {
            let words: Vec<&str> = lower
                .split(|c: char| !c.is_ascii_alphanumeric())
                .filter(|w| !w.is_empty())
                .collect();
            let has_id_word = words.iter().any(|w| *w == "id" || *w == "eventid");
            if has_id_word && words.len() <= 8 {
                words.iter().find_map(|w| match *w {
                    "4227" => Some(4227),
                    "4231" => Some(4231),
                    _ => None,
                })
            } else {
                None
            }
        };
        match id {
            Some(4227) => self.out.events.event_4227 += 1,
            Some(4231) => self.out.events.event_4231 += 1,
            _ => return false,
        }
        self.out.formats.insert(Format::WindowsEvents);
        true
    }

    /// `-b` owner lines under a Windows netstat row: ` RpcSs`, ` [svchost.exe]`,
    /// ` Can not obtain ownership information` (and its translations).
    fn try_windows_owner(&mut self, line: &str, t: &str) -> bool {
        if !line.starts_with(' ') {
            return false;
        }
        if t.starts_with('[') && t.ends_with(']') {
            // ` [svchost.exe]`: the executable of the row above (`netstat -b`).
            if let (Some(pid), Some(table)) = (self.last_windows_pid, self.current.as_mut()) {
                let name = t.trim_matches(['[', ']']).to_string();
                if pid != 0 && table.process_names.len() < 100_000 {
                    table.process_names.entry(pid).or_insert(name);
                }
            }
            return true;
        }
        t.split_whitespace().count() <= 8 && !t.contains(':') || t.contains("ownership")
    }

    /// Counts a hit into its class's entry, so a log of millions of lines keeps one entry per
    /// class.
    fn add_error(&mut self, hit: ErrorHit, line: &str) {
        let same = |e: &ErrorHit| {
            e.class == hit.class
                && e.os_code == hit.os_code
                && e.call == hit.call
                && e.ipv6_loopback == hit.ipv6_loopback
        };
        match self.out.errors.iter_mut().find(|(e, _, _)| same(e)) {
            Some((e, _, lines)) => {
                e.count += hit.count;
                *lines += 1;
            }
            None => self.out.errors.push((hit, line.to_string(), 1)),
        }
    }

    fn error_line(&mut self, t: &str) {
        if let Some(hits) = errors::wrk_socket_errors(t) {
            for h in hits {
                self.add_error(h, t);
            }
            self.out.formats.insert(Format::ErrorLines);
            return;
        }
        if let Some(hit) = errors::classify(t) {
            self.add_error(hit, t);
            self.out.formats.insert(Format::ErrorLines);
            return;
        }
        let lower = t.to_lowercase();
        let bucket = if self.in_error_block || errors::looks_like_error(&lower) {
            &mut self.out.unclassified
        } else {
            &mut self.out.other_lines
        };
        bucket.0 += 1;
        if bucket.1.len() < MAX_EXAMPLES {
            bucket.1.push(t.chars().take(200).collect());
        }
    }

    fn json_line(&mut self, line: &str) {
        let mut finished = Vec::new();
        {
            let j = &mut self.json;
            for ch in line.chars() {
                if j.collecting {
                    if j.current.len() < MAX_JSON_OBJECT {
                        j.current.push(ch);
                    } else {
                        j.too_big = true;
                    }
                }
                if j.in_string {
                    if j.escaped {
                        j.escaped = false;
                    } else if ch == '\\' {
                        j.escaped = true;
                    } else if ch == '"' {
                        j.in_string = false;
                    }
                    continue;
                }
                match ch {
                    '"' => j.in_string = true,
                    '{' | '[' => {
                        if j.depth == 0 && ch == '[' {
                            j.object_depth = 1;
                        }
                        if ch == '{' && j.depth == j.object_depth && !j.collecting {
                            j.collecting = true;
                            j.too_big = false;
                            j.current.clear();
                            j.current.push('{');
                        }
                        j.depth += 1;
                    }
                    '}' | ']' => {
                        j.depth -= 1;
                        if ch == '}' && j.collecting && j.depth == j.object_depth {
                            j.collecting = false;
                            finished.push((std::mem::take(&mut j.current), j.too_big));
                        }
                        if j.depth <= 0 {
                            j.active = false;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            if j.collecting && j.current.len() < MAX_JSON_OBJECT {
                j.current.push('\n');
            }
        }
        for (text, too_big) in finished {
            self.json_object(&text, too_big);
        }
    }

    fn json_object(&mut self, text: &str, too_big: bool) {
        let parsed: Option<serde_json::Map<String, serde_json::Value>> = if too_big {
            None
        } else {
            serde_json::from_str(text).ok()
        };
        let Some(obj) = parsed else {
            self.out.bad_json_objects += 1;
            return;
        };
        if obj.contains_key("LocalPort") && self.allowed(Format::GetNetTcpJson) {
            if let Some(result) = tables::get_net_tcp_json(&obj) {
                self.last_row_format = None;
                self.out.formats.insert(Format::GetNetTcpJson);
                let table = self.table_for(Format::GetNetTcpJson);
                match result {
                    Ok(row) => table.add(&row),
                    Err(_) => table.named_rows += 1,
                }
                return;
            }
        }
        if self.out.settings.read_json_setting(&obj) {
            self.out.formats.insert(Format::GetNetTcpSetting);
            return;
        }
        if let Some(id) = obj.get("Id").and_then(serde_json::Value::as_u64) {
            match id {
                4227 => self.out.events.event_4227 += 1,
                4231 => self.out.events.event_4231 += 1,
                _ => {}
            }
            if id == 4227 || id == 4231 {
                self.out.formats.insert(Format::WindowsEvents);
                return;
            }
        }
        self.out.bad_json_objects += 1;
    }

    /// Ends the file.
    pub fn finish(mut self) -> FileCapture {
        if let Some(mut done) = self.current.take() {
            if done.rows > 0 || done.named_rows > 0 || done.udp_rows > 0 {
                done.seal(KEEP_TOP);
                self.out.tables.push(done);
            }
        }
        if self.json.collecting {
            self.out.bad_json_objects += 1;
        }
        self.out
    }
}

/// Whether any row of a table is a listener or TIME_WAIT (used by tests).
pub fn has_state(table: &CapturedTable, state: CapState) -> bool {
    table.count(state) > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> FileCapture {
        let mut r = Reader::new("t", None);
        for line in text.lines() {
            r.line(line);
        }
        r.finish()
    }

    #[test]
    fn mixed_file_netstat_netsh_hey() {
        let text = "\nActive Connections\n\n  Proto  Local Address          Foreign Address        State           PID\n  TCP    0.0.0.0:8080           0.0.0.0:0              LISTENING       2840\n  TCP    127.0.0.1:50001        127.0.0.1:8080         TIME_WAIT       0\n  TCP    127.0.0.1:50002        127.0.0.1:8080         ESTABLISHED     7000\n  iphlpsvc\n [svchost.exe]\n\nProtocol tcp Dynamic Port Range\n---------------------------------\nStart Port      : 49152\nNumber of Ports : 16384\n\nProtocol tcp Port Exclusion Ranges\n\nStart Port    End Port\n----------    --------\n     50000       50099\n     55679       55679     *\n\n* - Administered port exclusions.\n\nListen on ipv4:             Connect to ipv4:\n\nAddress         Port        Address         Port\n--------------- ----------  --------------- ----------\n0.0.0.0         8080        127.0.0.1       80\n\nError distribution:\n  [4879]\tGet \"http://127.0.0.1:8080/\": dial tcp 127.0.0.1:8080: connectex: No connection could be made because the target machine actively refused it.\n  [3]\tsomething odd happened here\n";
        let c = read(text);
        assert_eq!(c.tables.len(), 1, "{:?}", c.tables.len());
        let t = &c.tables[0];
        assert_eq!(t.rows, 3);
        assert_eq!(t.count(CapState::TimeWait), 1);
        assert_eq!(c.settings.dynamic_port_v4, Some((49152, 16384)));
        assert_eq!(c.settings.excluded.len(), 2);
        assert_eq!(c.settings.portproxy.len(), 1);
        assert_eq!(c.errors.len(), 1);
        assert_eq!((c.errors[0].0.count, c.errors[0].2), (4879, 1));
        assert_eq!(c.unclassified.0, 1);
        assert_eq!(c.other_lines.0, 0, "{:?}", c.other_lines);
    }

    #[test]
    fn tcpip_events_by_id_and_by_text() {
        let c = read("Event ID: 4231\nId          : 4227\nA request to allocate an ephemeral port number from the global TCP port space has failed due to all such ports being in use.\n[{\"TimeCreated\": \"x\", \"Id\": 4231}]\n");
        assert_eq!(c.events.event_4231, 3);
        assert_eq!(c.events.event_4227, 1);
    }

    #[test]
    fn repeated_blocks_with_timestamps_are_snapshots() {
        let block = "Active Connections\n\n  Proto  Local Address          Foreign Address        State           PID\n  TCP    10.0.0.1:50001        10.0.0.2:80         TIME_WAIT       0\n";
        let text = format!("Tue 12/01/2026 10:00:00.00\n{block}\nTue 12/01/2026 10:00:30.00\n{block}  TCP    10.0.0.1:50002        10.0.0.2:80         TIME_WAIT       0\n");
        let c = read(&text);
        assert_eq!(c.tables.len(), 2);
        assert_eq!(c.tables[1].rows, 2);
        let dt =
            c.tables[1].taken_at_secs.unwrap_or(0.0) - c.tables[0].taken_at_secs.unwrap_or(0.0);
        assert!((dt - 30.0).abs() < 1e-6, "{dt}");
    }

    #[test]
    fn json_array_of_connections_and_settings() {
        let text = "[\n  {\n    \"LocalAddress\": \"10.0.0.1\",\n    \"LocalPort\": 50001,\n    \"RemoteAddress\": \"10.0.0.2\",\n    \"RemotePort\": 80,\n    \"State\": 11,\n    \"OwningProcess\": 0,\n    \"CimClass\": {\"x\": [1, {\"y\": \"}\"}]}\n  },\n  {\"LocalAddress\": \"0.0.0.0\", \"LocalPort\": 60000, \"RemoteAddress\": \"0.0.0.0\", \"RemotePort\": 0, \"State\": \"Bound\", \"OwningProcess\": 99}\n]\n{\"SettingName\": \"Internet\", \"DynamicPortRangeStartPort\": 10000, \"DynamicPortRangeNumberOfPorts\": 55535}\n";
        let c = read(text);
        assert_eq!(c.tables.len(), 1);
        assert_eq!(c.tables[0].count(CapState::TimeWait), 1);
        assert_eq!(c.tables[0].count(CapState::Bound), 1);
        assert_eq!(c.settings.dynamic_port_v4, Some((10000, 55535)));
        assert_eq!(c.bad_json_objects, 0);
    }
}
