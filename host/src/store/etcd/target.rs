//! Where an etcd store lives and how a host proves who it is there: the
//! members, the key prefix, TLS and password authentication, all parsed
//! from the part of a store URL after `etcd:`.
//!
//! ```text
//! etcd:https://10.0.0.1:2379,https://10.0.0.2:2379?prefix=prod/&ca_file=/etc/logstream/etcd-ca.pem
//!     &cert_file=/etc/logstream/client.pem&key_file=/etc/logstream/client-key.pem
//!     &user=logstream&password_file=/etc/logstream/etcd-password
//! ```
//!
//! The options live in the URL so every command that opens the store
//! (`host`, `deploy`, `status`, …) and the host config's `store` key take
//! the same thing. What it guarantees:
//! - **No secret in the URL.** A password is only ever read from a file
//!   (`password_file`), so it never shows in `ps`, shell history or logs;
//!   [`EtcdTarget`]'s `Display` is safe to log (it names files, not their
//!   contents).
//! - **No half-configured security.** `https://` members use TLS: the CA
//!   of `ca_file`, else the system's trusted roots. TLS options with
//!   `http://` members, a certificate without its key (or the reverse), a
//!   user without a password file (or the reverse), members that mix
//!   schemes, and unknown options are refused with one sentence naming the
//!   problem, before anything connects.
//! - **Files are read at open**, each failure naming the option and the
//!   file, so a wrong path is reported at start, not at the first election.

use std::fmt;
use std::path::{Path, PathBuf};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use super::super::kv::StoreError;

/// The key prefix of a store whose URL names none.
pub const DEFAULT_PREFIX: &str = "logstream/";

/// Largest file the options name (a PEM bundle or a password): 1 MiB. A
/// larger one is a wrong path (a log, a disk image), refused rather than
/// read.
pub const MAX_OPTION_FILE_BYTES: u64 = 1 << 20;

/// Where an etcd store lives: its members, its key prefix, and how to
/// reach it securely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdTarget {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// Set when the members are `https://`.
    pub tls: Option<TlsFiles>,
    pub auth: Option<PasswordAuth>,
}

/// The TLS material of an `https://` store.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    /// PEM certificates of the CA that signed the members' certificates;
    /// `None`: the system's trusted roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate, for members started with
    /// `--client-cert-auth`.
    pub client: Option<ClientCertificate>,
}

/// A client certificate and its private key, both PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertificate {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// etcd's password authentication (`etcdctl auth enable`): a user, and
/// the file its password is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordAuth {
    pub user: String,
    pub password_file: PathBuf,
}

/// The options of an `etcd:` URL, each at most once.
#[derive(Default)]
struct Options {
    prefix: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    user: Option<String>,
    password_file: Option<PathBuf>,
}

const OPTION_NAMES: &str = "prefix, ca_file, cert_file, key_file, user and password_file";

fn refuse(sentence: String) -> StoreError {
    StoreError::Other(sentence)
}

impl Options {
    fn parse(query: &str) -> Result<Options, StoreError> {
        let mut options = Options::default();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let Some((name, value)) = pair.split_once('=').filter(|(_, v)| !v.is_empty()) else {
                return Err(refuse(format!(
                    "the etcd store option {pair:?} has no value (write NAME=VALUE; the options are {OPTION_NAMES})"
                )));
            };
            let duplicate = match name {
                "prefix" => options.prefix.replace(value.to_string()).is_some(),
                "ca_file" => options.ca_file.replace(value.into()).is_some(),
                "cert_file" => options.cert_file.replace(value.into()).is_some(),
                "key_file" => options.key_file.replace(value.into()).is_some(),
                "user" => options.user.replace(value.to_string()).is_some(),
                "password_file" => options.password_file.replace(value.into()).is_some(),
                "password" => {
                    return Err(refuse(
                        "the etcd store takes no password in its URL (it would show in `ps` and logs): put it in a file and name it with `password_file=PATH`".into(),
                    ))
                }
                _ => {
                    return Err(refuse(format!(
                        "the etcd store option {name:?} is unknown: the options are {OPTION_NAMES}"
                    )))
                }
            };
            if duplicate {
                return Err(refuse(format!(
                    "the etcd store option {name:?} is given twice"
                )));
            }
        }
        Ok(options)
    }
}

impl EtcdTarget {
    /// Parse the part of a store URL after `etcd:`:
    /// `MEMBER[,MEMBER…][?OPTION=VALUE[&…]]`, members `http://HOST:PORT`
    /// or `https://HOST:PORT`, options as in the module doc.
    pub fn parse(spec: &str) -> Result<EtcdTarget, StoreError> {
        let (members, query) = spec.split_once('?').unwrap_or((spec, ""));
        let endpoints: Vec<String> = members
            .split(',')
            .map(str::trim)
            .filter(|member| !member.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(refuse(
                "the store URL `etcd:` needs at least one member, e.g. `etcd:http://127.0.0.1:2379`"
                    .into(),
            ));
        }
        if let Some(bad) = endpoints
            .iter()
            .find(|e| !(e.starts_with("http://") || e.starts_with("https://")))
        {
            return Err(refuse(format!(
                "the etcd member {bad:?} is not an http:// or https:// URL (e.g. `etcd:http://127.0.0.1:2379`)"
            )));
        }
        let secure = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if secure != 0 && secure != endpoints.len() {
            return Err(refuse(
                "the etcd members mix http:// and https://: a cluster's client URLs are all one or the other".into(),
            ));
        }
        let options = Options::parse(query)?;
        let client = match (options.cert_file, options.key_file) {
            (Some(cert_file), Some(key_file)) => Some(ClientCertificate {
                cert_file,
                key_file,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(refuse(
                    "the etcd store option cert_file needs key_file, the certificate's private key"
                        .into(),
                ))
            }
            (None, Some(_)) => {
                return Err(refuse(
                    "the etcd store option key_file needs cert_file, the client certificate".into(),
                ))
            }
        };
        let tls = if secure == 0 {
            if options.ca_file.is_some() || client.is_some() {
                return Err(refuse(
                    "the etcd store's TLS options (ca_file, cert_file, key_file) need https:// members".into(),
                ));
            }
            None
        } else {
            Some(TlsFiles {
                ca_file: options.ca_file,
                client,
            })
        };
        let auth = match (options.user, options.password_file) {
            (Some(user), Some(password_file)) => Some(PasswordAuth {
                user,
                password_file,
            }),
            (None, None) => None,
            (Some(_), None) => {
                return Err(refuse(
                    "the etcd store option user needs password_file, a file holding the user's password".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(refuse(
                    "the etcd store option password_file needs user, the etcd user it is the password of".into(),
                ))
            }
        };
        Ok(EtcdTarget {
            endpoints,
            prefix: options.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_string()),
            tls,
            auth,
        })
    }

    /// The client options this target asks for: TLS material and the
    /// password, read from their files now.
    pub(super) fn security(&self, options: ConnectOptions) -> Result<ConnectOptions, StoreError> {
        let mut options = options;
        if let Some(tls) = &self.tls {
            let mut config = TlsOptions::new();
            config = match &tls.ca_file {
                Some(ca_file) => config
                    .ca_certificate(Certificate::from_pem(read_option_file("ca_file", ca_file)?)),
                None => config.with_native_roots(),
            };
            if let Some(client) = &tls.client {
                config = config.identity(Identity::from_pem(
                    read_option_file("cert_file", &client.cert_file)?,
                    read_option_file("key_file", &client.key_file)?,
                ));
            }
            options = options.with_tls(config);
        }
        if let Some(auth) = &self.auth {
            let password =
                String::from_utf8(read_option_file("password_file", &auth.password_file)?)
                    .map_err(|_| {
                        refuse(format!(
                            "the etcd password file {} is not UTF-8 text",
                            auth.password_file.display()
                        ))
                    })?;
            // A file written by `echo` ends in a newline that is not part
            // of the password.
            let password = password.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                return Err(refuse(format!(
                    "the etcd password file {} is empty",
                    auth.password_file.display()
                )));
            }
            // Tokens expire (etcd's `--auth-token-ttl`, 5 minutes by
            // default): the client authenticates again when one has.
            options = options
                .with_user(auth.user.clone(), password)
                .with_auto_token_refresh(true);
        }
        Ok(options)
    }
}

/// The store URL again, safe to log: it names the option files, never
/// what they hold.
impl fmt::Display for EtcdTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "etcd:{}?prefix={}",
            self.endpoints.join(","),
            self.prefix
        )?;
        let mut option = |name: &str, value: &Path| write!(f, "&{name}={}", value.display());
        if let Some(tls) = &self.tls {
            if let Some(ca_file) = &tls.ca_file {
                option("ca_file", ca_file)?;
            }
            if let Some(client) = &tls.client {
                option("cert_file", &client.cert_file)?;
                option("key_file", &client.key_file)?;
            }
        }
        if let Some(auth) = &self.auth {
            write!(f, "&user={}", auth.user)?;
            write!(f, "&password_file={}", auth.password_file.display())?;
        }
        Ok(())
    }
}

fn read_option_file(option: &str, path: &Path) -> Result<Vec<u8>, StoreError> {
    let too_large = std::fs::metadata(path)
        .map(|meta| meta.len() > MAX_OPTION_FILE_BYTES)
        .unwrap_or(false);
    if too_large {
        return Err(refuse(format!(
            "the etcd store option {option}={} names a file over {MAX_OPTION_FILE_BYTES} bytes, not a PEM file or a password",
            path.display()
        )));
    }
    std::fs::read(path).map_err(|e| {
        refuse(format!(
            "cannot read the etcd store option {option}={}: {e}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(spec: &str) -> String {
        match EtcdTarget::parse(spec) {
            Err(StoreError::Other(sentence)) => sentence,
            other => panic!("{spec:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn urls_name_members_and_a_prefix() {
        let target = EtcdTarget::parse("http://a:2379,http://b:2379?prefix=t/1/").unwrap();
        assert_eq!(target.endpoints, vec!["http://a:2379", "http://b:2379"]);
        assert_eq!(target.prefix, "t/1/");
        assert_eq!(target.tls, None);
        assert_eq!(target.auth, None);
        assert_eq!(
            EtcdTarget::parse("http://a:2379").unwrap().prefix,
            DEFAULT_PREFIX
        );
        assert!(refusal("").contains("at least one member"));
        assert!(refusal("a:2379").contains("not an http:// or https://"));
        assert!(refusal("http://a:2379?name=x").contains("unknown"));
        assert!(refusal("http://a:2379?prefix").contains("no value"));
        assert!(refusal("http://a:2379?prefix=a&prefix=b").contains("twice"));
    }

    #[test]
    fn https_members_take_tls_files_and_a_user_with_a_password_file() {
        let spec = "https://a:2379,https://b:2379?prefix=p/&ca_file=/ca.pem&cert_file=/c.pem&key_file=/k.pem&user=ls&password_file=/pw";
        let target = EtcdTarget::parse(spec).unwrap();
        assert_eq!(
            target.tls,
            Some(TlsFiles {
                ca_file: Some("/ca.pem".into()),
                client: Some(ClientCertificate {
                    cert_file: "/c.pem".into(),
                    key_file: "/k.pem".into(),
                }),
            })
        );
        assert_eq!(
            target.auth,
            Some(PasswordAuth {
                user: "ls".into(),
                password_file: "/pw".into(),
            })
        );
        // The URL round-trips through Display, the form the store logs.
        assert_eq!(format!("etcd:{spec}"), target.to_string());
        assert_eq!(
            EtcdTarget::parse(&target.to_string()["etcd:".len()..]).unwrap(),
            target
        );
        // https:// alone: TLS with the system's roots.
        assert_eq!(
            EtcdTarget::parse("https://a:2379").unwrap().tls,
            Some(TlsFiles::default())
        );
    }

    #[test]
    fn half_configured_security_is_refused_with_one_sentence() {
        assert!(refusal("http://a:2379?ca_file=/ca.pem").contains("need https://"));
        assert!(refusal("http://a:2379,https://b:2379").contains("mix"));
        assert!(refusal("https://a:2379?cert_file=/c.pem").contains("needs key_file"));
        assert!(refusal("https://a:2379?key_file=/k.pem").contains("needs cert_file"));
        assert!(refusal("http://a:2379?user=ls").contains("needs password_file"));
        assert!(refusal("http://a:2379?password_file=/pw").contains("needs user"));
        assert!(
            refusal("http://a:2379?user=ls&password=hunter2").contains("no password in its URL")
        );
    }

    #[test]
    fn option_files_are_read_at_open_and_name_themselves_when_they_fail() {
        let dir = tempfile::tempdir().unwrap();
        let password = dir.path().join("pw");
        let spec = |file: &Path| format!("http://a:2379?user=ls&password_file={}", file.display());
        let security = |spec: &str| {
            EtcdTarget::parse(spec)
                .unwrap()
                .security(ConnectOptions::new())
                .map(|_| ())
        };
        let missing = security(&spec(&dir.path().join("absent"))).unwrap_err();
        assert!(missing.to_string().contains("password_file="), "{missing}");
        std::fs::write(&password, "\n").unwrap();
        let empty = security(&spec(&password)).unwrap_err();
        assert!(empty.to_string().contains("is empty"), "{empty}");
        std::fs::write(&password, "s3cret\n").unwrap();
        security(&spec(&password)).unwrap();
    }
}
