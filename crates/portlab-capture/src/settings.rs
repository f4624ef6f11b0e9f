//! Settings as captured: `netsh … show dynamicport` / `excludedportrange` / `portproxy`,
//! `Get-NetTCPSetting`, `reg query …\Tcpip\Parameters`, macOS and Linux `sysctl` lines.
//! Only numbers are read from netsh output (its labels are translated, research/captures.md
//! §1.4, as DataDog's agent does).

use std::collections::BTreeMap;

use serde::Serialize;

/// A block of ports `netsh int ipv4 show excludedportrange` lists (taken out of the pool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ExcludedRange {
    /// First port of the block.
    pub low: u16,
    /// Last port of the block.
    pub high: u16,
    /// Marked `*`: an administered (persistent) exclusion.
    pub administered: bool,
}

/// One `netsh interface portproxy` rule: the forwarder listens on `listen` and opens one
/// connection to `connect` per accepted connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct PortProxyRule {
    /// Listen address (`*` or an IP).
    pub listen_address: String,
    /// Listen port.
    pub listen_port: u16,
    /// Connect address (an IP or a host name).
    pub connect_address: String,
    /// Connect port.
    pub connect_port: u16,
}

/// Everything the captures said about the port pool's settings. `None` = not captured.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CapturedSettings {
    /// Windows IPv4 TCP dynamic port range (netsh or Get-NetTCPSetting) as (start, number).
    pub dynamic_port_v4: Option<(u16, u32)>,
    /// Windows IPv6 TCP dynamic port range as (start, number).
    pub dynamic_port_v6: Option<(u16, u32)>,
    /// Where the dynamic range came from.
    pub dynamic_port_source: Option<&'static str>,
    /// Excluded port blocks.
    pub excluded: Vec<ExcludedRange>,
    /// portproxy rules.
    pub portproxy: Vec<PortProxyRule>,
    /// `TcpTimedWaitDelay` (registry, seconds).
    pub tcp_timed_wait_delay_secs: Option<u32>,
    /// `MaxUserPort` (registry): the pre-Vista upper end of the range.
    pub max_user_port: Option<u32>,
    /// `AutoReusePortRangeNumberOfPorts` (Get-NetTCPSetting): 0 = auto-reuse off.
    pub auto_reuse_ports: Option<u32>,
    /// macOS `net.inet.ip.portrange.first`.
    pub macos_first: Option<u16>,
    /// macOS `net.inet.ip.portrange.last`.
    pub macos_last: Option<u16>,
    /// macOS `net.inet.tcp.msl` in ms (TIME_WAIT = 2 × MSL).
    pub macos_msl_ms: Option<u32>,
    /// Linux `net.ipv4.*`/`net.core.*` sysctls, by key.
    pub linux: BTreeMap<String, String>,
}

/// A settings line recognised on its own (outside netsh's sections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingLine {
    /// `sysctl` line from macOS (`net.inet.…: v`).
    Macos,
    /// `sysctl` line from Linux (`net.ipv4.… = v`).
    Linux,
    /// `reg query` value line.
    Registry,
    /// `Get-NetTCPSetting` list line.
    GetNetTcpSetting,
}

impl CapturedSettings {
    /// Reads a `sysctl`, `reg query` or `Get-NetTCPSetting` line into the settings; returns
    /// which kind it was.
    pub fn read_line(&mut self, line: &str) -> Option<SettingLine> {
        let t = line.trim();
        if let Some(kind) = self.sysctl(t) {
            return Some(kind);
        }
        if let Some(kind) = self.registry(t) {
            return Some(kind);
        }
        self.get_net_tcp_setting(t)
    }

    fn sysctl(&mut self, t: &str) -> Option<SettingLine> {
        let (key, value) = t
            .split_once(" = ")
            .or_else(|| t.split_once(": "))
            .or_else(|| t.split_once('='))?;
        let key = key.trim();
        let value = value.trim();
        if let Some(k) = key.strip_prefix("net.inet.") {
            match k {
                "ip.portrange.first" => self.macos_first = value.parse().ok(),
                "ip.portrange.last" => self.macos_last = value.parse().ok(),
                "tcp.msl" => self.macos_msl_ms = value.parse().ok(),
                _ if k.starts_with("ip.") || k.starts_with("tcp.") => {}
                _ => return None,
            }
            return Some(SettingLine::Macos);
        }
        if (key.starts_with("net.ipv4.") || key.starts_with("net.core.")) && !key.contains(' ') {
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            self.linux.insert(key.to_string(), value);
            return Some(SettingLine::Linux);
        }
        None
    }

    fn registry(&mut self, t: &str) -> Option<SettingLine> {
        let mut tokens = t.split_whitespace();
        let (name, kind, value) = (tokens.next()?, tokens.next()?, tokens.next()?);
        if kind != "REG_DWORD" {
            return None;
        }
        let n = value
            .strip_prefix("0x")
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .or_else(|| value.parse().ok())?;
        match name {
            "TcpTimedWaitDelay" => self.tcp_timed_wait_delay_secs = Some(n),
            "MaxUserPort" => self.max_user_port = Some(n),
            _ => {}
        }
        Some(SettingLine::Registry)
    }

    fn get_net_tcp_setting(&mut self, t: &str) -> Option<SettingLine> {
        let (key, value) = t.split_once(':')?;
        let key = key.trim();
        let value = value.trim();
        let n: Option<u32> = value.parse().ok();
        match key {
            "DynamicPortRangeStartPort" | "DynamicPortRangeNumberOfPorts" => {
                self.get_net_tcp_port(key, n);
            }
            "AutoReusePortRangeNumberOfPorts" => {
                if self.auto_reuse_ports.is_none() {
                    self.auto_reuse_ports = n;
                }
            }
            "SettingName" | "AutoReusePortRangeStartPort" => {}
            _ => return None,
        }
        Some(SettingLine::GetNetTcpSetting)
    }

    /// Takes the first template's non-empty port fields; netsh output, when also captured,
    /// wins (it is what the stack uses).
    fn get_net_tcp_port(&mut self, key: &str, n: Option<u32>) {
        if self.dynamic_port_source == Some("netsh") {
            return;
        }
        let Some(n) = n else { return };
        let (start, num) = self.dynamic_port_v4.unwrap_or((0, 0));
        let next = if key == "DynamicPortRangeStartPort" {
            if start != 0 {
                return;
            }
            (u16::try_from(n).unwrap_or(0), num)
        } else {
            if num != 0 {
                return;
            }
            (start, n)
        };
        self.dynamic_port_v4 = Some(next);
        self.dynamic_port_source = Some("Get-NetTCPSetting");
    }

    /// A `Get-NetTCPSetting | ConvertTo-Json` object.
    pub fn read_json_setting(&mut self, obj: &serde_json::Map<String, serde_json::Value>) -> bool {
        let num = |k: &str| {
            obj.get(k)
                .and_then(serde_json::Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
        };
        if !obj.contains_key("DynamicPortRangeStartPort") {
            return false;
        }
        if let Some(start) = num("DynamicPortRangeStartPort") {
            self.get_net_tcp_port("DynamicPortRangeStartPort", Some(start));
        }
        if let Some(n) = num("DynamicPortRangeNumberOfPorts") {
            self.get_net_tcp_port("DynamicPortRangeNumberOfPorts", Some(n));
        }
        if self.auto_reuse_ports.is_none() {
            self.auto_reuse_ports = num("AutoReusePortRangeNumberOfPorts");
        }
        true
    }

    /// Records a netsh dynamicport block's (start, number).
    pub fn set_netsh_dynamic(&mut self, ipv6: bool, start: u16, num: u32) {
        if ipv6 {
            self.dynamic_port_v6 = Some((start, num));
        } else {
            self.dynamic_port_v4 = Some((start, num));
            self.dynamic_port_source = Some("netsh");
        }
    }

    /// Merges the settings of a later file over these.
    pub fn merge(&mut self, later: CapturedSettings) {
        macro_rules! take {
            ($($f:ident),*) => { $( if later.$f.is_some() { self.$f = later.$f; } )* };
        }
        take!(
            dynamic_port_v4,
            dynamic_port_v6,
            dynamic_port_source,
            tcp_timed_wait_delay_secs,
            max_user_port,
            auto_reuse_ports,
            macos_first,
            macos_last,
            macos_msl_ms
        );
        for r in later.excluded {
            if !self.excluded.contains(&r) {
                self.excluded.push(r);
            }
        }
        for r in later.portproxy {
            if !self.portproxy.contains(&r) {
                self.portproxy.push(r);
            }
        }
        self.linux.extend(later.linux);
    }
}

/// `Start Port : 49152` style line of `netsh … show dynamicport`: the number after the
/// last colon.
pub fn netsh_number(line: &str) -> Option<u32> {
    let (_, n) = line.rsplit_once(':')?;
    n.trim().parse().ok()
}

/// A row of `netsh … show excludedportrange`: two numbers and an optional `*`.
pub fn excluded_row(tokens: &[&str]) -> Option<ExcludedRange> {
    let (low, high) = (tokens.first()?.parse().ok()?, tokens.get(1)?.parse().ok()?);
    let administered = match tokens.get(2) {
        None => false,
        Some(&"*") if tokens.len() == 3 => true,
        _ => return None,
    };
    (low <= high).then_some(ExcludedRange {
        low,
        high,
        administered,
    })
}

/// A row of `netsh interface portproxy show all`: `listen-address port connect-address port`.
pub fn portproxy_row(tokens: &[&str]) -> Option<PortProxyRule> {
    if tokens.len() != 4 {
        return None;
    }
    Some(PortProxyRule {
        listen_address: tokens[0].to_string(),
        listen_port: tokens[1].parse().ok()?,
        connect_address: tokens[2].to_string(),
        connect_port: tokens[3].parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sysctl_registry_and_ps_lines() {
        let mut s = CapturedSettings::default();
        assert_eq!(
            s.read_line("net.inet.tcp.msl: 15000"),
            Some(SettingLine::Macos)
        );
        assert_eq!(
            s.read_line("net.ipv4.ip_local_port_range = 32768\t60999"),
            Some(SettingLine::Linux)
        );
        assert_eq!(
            s.read_line("    TcpTimedWaitDelay    REG_DWORD    0x1e"),
            Some(SettingLine::Registry)
        );
        assert_eq!(
            s.read_line("DynamicPortRangeStartPort      : 10000"),
            Some(SettingLine::GetNetTcpSetting)
        );
        s.read_line("DynamicPortRangeNumberOfPorts  : 55535");
        assert_eq!(s.macos_msl_ms, Some(15000));
        assert_eq!(s.tcp_timed_wait_delay_secs, Some(30));
        assert_eq!(s.dynamic_port_v4, Some((10000, 55535)));
        assert_eq!(s.linux["net.ipv4.ip_local_port_range"], "32768 60999");
        assert_eq!(s.read_line("Total:        1.2 secs"), None);
        assert_eq!(
            excluded_row(&["55679", "55679", "*"]).map(|r| r.administered),
            Some(true)
        );
        assert_eq!(excluded_row(&["80", "79"]), None);
    }
}
