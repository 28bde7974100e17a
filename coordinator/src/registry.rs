//! Registry records (relays, clients, analyses servers) and the validation of their JSON input.

use serde::Serialize;
use serde_json::{Map, Value as Json};

use crate::validate;

/// Default relay control port (`lttng-relayd`).
pub const DEFAULT_CTRLPORT: u16 = 5342;
/// Default relay data port (`lttng-relayd`).
pub const DEFAULT_DATAPORT: u16 = 5343;
/// Default SSH port.
pub const DEFAULT_SSHPORT: u16 = 22;
/// Default SSH user, as in the seed.
pub const DEFAULT_SSHUSER: &str = "root";

/// The three kinds of registered hosts, each at its own path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Relays,
    Clients,
    AnalysesServers,
}

impl Kind {
    /// The path segment under `/trace/api/v1.0`.
    pub fn path(self) -> &'static str {
        match self {
            Kind::Relays => "relays",
            Kind::Clients => "clients",
            Kind::AnalysesServers => "analyses_servers",
        }
    }

    /// The SurrealDB table.
    pub fn table(self) -> &'static str {
        match self {
            Kind::Relays => "relay",
            Kind::Clients => "client",
            Kind::AnalysesServers => "analyses_server",
        }
    }

    /// A human name for one record.
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Relays => "relay",
            Kind::Clients => "client",
            Kind::AnalysesServers => "analyses server",
        }
    }

    fn has_ssh(self) -> bool {
        !matches!(self, Kind::Relays)
    }
}

/// A registered host. Relays carry `ctrlport`/`dataport`; clients and analyses servers
/// carry `sshport`/`sshuser`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HostRecord {
    /// Integer id, never reused.
    pub id: u64,
    /// DNS name or address literal, unique within its kind.
    pub hostname: String,
    pub ipv4: Option<String>,
    pub ipv6: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctrlport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sshport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sshuser: Option<String>,
    /// Relays only: the `lttng-relayd --output` directory, where analyses find the traces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_dir: Option<String>,
}

/// A field that failed validation: the 422 answer names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        FieldError {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

impl HostRecord {
    /// A new record with the kind's default ports and user.
    pub fn new(kind: Kind, hostname: String, ipv4: Option<String>, ipv6: Option<String>) -> Self {
        let ssh = kind.has_ssh();
        HostRecord {
            id: 0,
            hostname,
            ipv4,
            ipv6,
            ctrlport: (!ssh).then_some(DEFAULT_CTRLPORT),
            dataport: (!ssh).then_some(DEFAULT_DATAPORT),
            sshport: ssh.then_some(DEFAULT_SSHPORT),
            sshuser: ssh.then(|| DEFAULT_SSHUSER.to_owned()),
            output_dir: None,
        }
    }

    /// Builds a record from a POST body: `hostname` and one of `ipv4`/`ipv6` are required.
    pub fn from_post(kind: Kind, body: &Map<String, Json>) -> Result<Self, FieldError> {
        if !body.contains_key("hostname") {
            return Err(FieldError::new("hostname", "is required"));
        }
        let mut record = HostRecord::new(kind, String::new(), None, None);
        record.apply(kind, body)?;
        Ok(record)
    }

    /// Applies the fields present in a PUT body, then checks the whole record.
    pub fn apply(&mut self, kind: Kind, body: &Map<String, Json>) -> Result<(), FieldError> {
        if let Some(v) = body.get("hostname") {
            let name = string(v, "hostname")?
                .ok_or_else(|| FieldError::new("hostname", "must not be null"))?;
            validate::hostname(&name)
                .map_err(|e| FieldError::new("hostname", format!("{name:?} {e}")))?;
            self.hostname = name;
        }
        if let Some(v) = body.get("ipv4") {
            self.ipv4 = string(v, "ipv4")?
                .map(|s| validate::ipv4(&s).map(|a| a.to_string()))
                .transpose()
                .map_err(|e| FieldError::new("ipv4", e))?;
        }
        if let Some(v) = body.get("ipv6") {
            self.ipv6 = string(v, "ipv6")?
                .map(|s| validate::ipv6(&s).map(|a| a.to_string()))
                .transpose()
                .map_err(|e| FieldError::new("ipv6", e))?;
        }
        let ports: &[&str] = if kind.has_ssh() {
            &["sshport"]
        } else {
            &["ctrlport", "dataport"]
        };
        for &field in ports {
            if let Some(v) = body.get(field) {
                let n = v.as_i64().ok_or_else(|| {
                    FieldError::new(field, format!("must be an integer port (1-65535), got {v}"))
                })?;
                let port = validate::port(n).map_err(|e| FieldError::new(field, e))?;
                match field {
                    "sshport" => self.sshport = Some(port),
                    "ctrlport" => self.ctrlport = Some(port),
                    _ => self.dataport = Some(port),
                }
            }
        }
        if kind.has_ssh() {
            if let Some(v) = body.get("sshuser") {
                let user = string(v, "sshuser")?
                    .ok_or_else(|| FieldError::new("sshuser", "must not be null"))?;
                validate::username(&user)
                    .map_err(|e| FieldError::new("sshuser", format!("{user:?} {e}")))?;
                self.sshuser = Some(user);
            }
        }
        if !kind.has_ssh() {
            if let Some(v) = body.get("output_dir") {
                self.output_dir = string(v, "output_dir")?
                    .map(|d| validate::abs_path(&d).map(|()| d))
                    .transpose()
                    .map_err(|e| FieldError::new("output_dir", e))?;
            }
        }
        if self.ipv4.is_none() && self.ipv6.is_none() {
            return Err(FieldError::new(
                "ipv4",
                "at least one of ipv4 and ipv6 is required",
            ));
        }
        Ok(())
    }

    /// The stored fields (no id, no nulls: absent options stay NONE in the schema).
    pub fn content(&self, kind: Kind) -> Json {
        let mut map = Map::new();
        map.insert("hostname".into(), Json::from(self.hostname.clone()));
        if let Some(v) = &self.ipv4 {
            map.insert("ipv4".into(), Json::from(v.clone()));
        }
        if let Some(v) = &self.ipv6 {
            map.insert("ipv6".into(), Json::from(v.clone()));
        }
        if kind.has_ssh() {
            map.insert(
                "sshport".into(),
                Json::from(self.sshport.unwrap_or(DEFAULT_SSHPORT)),
            );
            map.insert(
                "sshuser".into(),
                Json::from(
                    self.sshuser
                        .clone()
                        .unwrap_or_else(|| DEFAULT_SSHUSER.into()),
                ),
            );
        } else {
            map.insert(
                "ctrlport".into(),
                Json::from(self.ctrlport.unwrap_or(DEFAULT_CTRLPORT)),
            );
            map.insert(
                "dataport".into(),
                Json::from(self.dataport.unwrap_or(DEFAULT_DATAPORT)),
            );
            if let Some(dir) = &self.output_dir {
                map.insert("output_dir".into(), Json::from(dir.clone()));
            }
        }
        Json::Object(map)
    }

    /// The names this record answers to: its hostname and its addresses.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        [
            Some(self.hostname.as_str()),
            self.ipv4.as_deref(),
            self.ipv6.as_deref(),
        ]
        .into_iter()
        .flatten()
    }

    /// Whether `name` is this record's hostname or one of its addresses.
    pub fn answers_to(&self, name: &str) -> bool {
        self.names().any(|n| n == name)
    }

    /// Whether `address` is one of this record's addresses.
    pub fn has_address(&self, address: &str) -> bool {
        self.ipv4.as_deref() == Some(address) || self.ipv6.as_deref() == Some(address)
    }

    /// The address to connect to: IPv4 first, then IPv6, then the hostname.
    pub fn address(&self) -> String {
        self.ipv4
            .clone()
            .or_else(|| self.ipv6.clone())
            .unwrap_or_else(|| self.hostname.clone())
    }
}

fn string(value: &Json, field: &str) -> Result<Option<String>, FieldError> {
    match value {
        Json::Null => Ok(None),
        Json::String(s) => Ok(Some(s.clone())),
        other => Err(FieldError::new(
            field,
            format!("must be a string, got {other}"),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn post(kind: Kind, v: Json) -> Result<HostRecord, FieldError> {
        HostRecord::from_post(kind, v.as_object().unwrap())
    }

    #[test]
    fn relay_output_dir_is_stored() {
        let r = post(
            Kind::Relays,
            json!({"hostname": "r", "ipv4": "10.0.0.1", "output_dir": "/srv/traces"}),
        )
        .unwrap();
        assert_eq!(r.content(Kind::Relays)["output_dir"], "/srv/traces");
        let e = post(
            Kind::Relays,
            json!({"hostname": "r", "ipv4": "10.0.0.1", "output_dir": "../x"}),
        )
        .unwrap_err();
        assert_eq!(e.field, "output_dir");
    }

    #[test]
    fn seed_relay_gets_defaults() {
        let r = post(
            Kind::Relays,
            json!({"hostname": "myrelayhostname", "ipv6": "fe80::1", "extra": 1}),
        )
        .unwrap();
        assert_eq!(
            (r.ctrlport, r.dataport, r.sshport),
            (Some(5342), Some(5343), None)
        );
        let c = post(Kind::Clients, json!({"hostname": "h", "ipv4": "10.0.0.2"})).unwrap();
        assert_eq!((c.sshport, c.sshuser.as_deref()), (Some(22), Some("root")));
    }

    #[test]
    fn field_errors_name_the_field() {
        let cases = [
            (json!({"ipv4": "1.2.3.4"}), "hostname"),
            (json!({"hostname": "h"}), "ipv4"),
            (json!({"hostname": "h;rm", "ipv4": "1.2.3.4"}), "hostname"),
            (json!({"hostname": "h", "ipv4": "1.2.3.400"}), "ipv4"),
            (json!({"hostname": "h", "ipv6": "$(id)"}), "ipv6"),
            (
                json!({"hostname": "h", "ipv4": "1.2.3.4", "sshport": 0}),
                "sshport",
            ),
            (
                json!({"hostname": "h", "ipv4": "1.2.3.4", "sshport": "22"}),
                "sshport",
            ),
            (
                json!({"hostname": "h", "ipv4": "1.2.3.4", "sshuser": "root`id`"}),
                "sshuser",
            ),
            (json!({"hostname": 5, "ipv4": "1.2.3.4"}), "hostname"),
        ];
        for (body, field) in cases {
            assert_eq!(
                post(Kind::Clients, body.clone()).unwrap_err().field,
                field,
                "{body}"
            );
        }
        let e = post(
            Kind::Relays,
            json!({"hostname": "h", "ipv4": "1.2.3.4", "dataport": 70000}),
        )
        .unwrap_err();
        assert_eq!(e.field, "dataport");
    }
}
