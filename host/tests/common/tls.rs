//! A throwaway certificate authority for tests, made with the `openssl`
//! command: a CA, a server certificate for one IP address, and client
//! certificates, all P-256 keys (PKCS#8 PEM, what rustls and Go read) valid
//! for one day.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Days the test certificates are valid: longer than any test run.
const VALIDITY_DAYS: &str = "1";

pub struct TestCa {
    dir: PathBuf,
}

/// A certificate and its private key, PEM files.
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Run `openssl` in `dir` with the words of `command_line` (file names
/// relative to `dir`, none with spaces).
fn openssl(dir: &Path, command_line: &str) {
    let args: Vec<&str> = command_line.split_whitespace().collect();
    let output = Command::new("openssl")
        .current_dir(dir)
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (install Debian's openssl): {e}"));
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl TestCa {
    /// A new CA whose files live in `dir`.
    pub fn new(dir: &Path) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        openssl(
            dir,
            &format!(
                "req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                 -keyout ca-key.pem -out ca.pem -days {VALIDITY_DAYS} -subj /CN=logstream-test-ca"
            ),
        );
        TestCa {
            dir: dir.to_path_buf(),
        }
    }

    /// The CA's certificate (what clients and servers trust).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate named `name` signed by the CA: for a server when `ip`
    /// is given (its subject alternative name, and usable as a client too,
    /// as etcd members are to each other), else for a client whose common
    /// name is `name`.
    pub fn issue(&self, name: &str, ip: Option<&str>) -> CertFiles {
        let key = format!("{name}-key.pem");
        let csr = format!("{name}.csr");
        let cert = format!("{name}.pem");
        let extensions = format!("{name}.ext");
        let mut lines = vec![
            "basicConstraints=CA:FALSE".to_string(),
            "keyUsage=digitalSignature,keyEncipherment".to_string(),
        ];
        match ip {
            Some(ip) => {
                lines.push(format!("subjectAltName=IP:{ip}"));
                lines.push("extendedKeyUsage=serverAuth,clientAuth".to_string());
            }
            None => lines.push("extendedKeyUsage=clientAuth".to_string()),
        }
        std::fs::write(self.dir.join(&extensions), lines.join("\n") + "\n").unwrap();
        openssl(
            &self.dir,
            &format!(
                "req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
                 -keyout {key} -out {csr} -subj /CN={name}"
            ),
        );
        openssl(
            &self.dir,
            &format!(
                "x509 -req -in {csr} -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
                 -out {cert} -days {VALIDITY_DAYS} -extfile {extensions}"
            ),
        );
        CertFiles {
            cert: self.dir.join(cert),
            key: self.dir.join(key),
        }
    }
}
