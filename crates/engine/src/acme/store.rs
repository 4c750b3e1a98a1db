//! The on-disk certificate store, upstream's layout: `<store>/<route>/{cert.pem, key.pem,
//! meta.json}`, plus `<store>/.acme/` for accounts and locks. Blocking file I/O: callers run it
//! on the blocking pool, never on a runtime worker.
//!
//! Crash safety: an entry is written whole into `<route>.new/` (each file fsynced, key 0600,
//! `meta.json` last, carrying the SHA-256 of `cert.pem`), the directory is fsynced, then the
//! old entry is renamed to `<route>.old/`, the new one into place, and the old one removed.
//! Whatever instant a process dies at, [`DiskStore::load`] finds the old entry or the new one:
//! a missing `<route>/` is recovered from a complete `.new/` (else from `.old/`), and an entry
//! whose files do not agree with its `meta.json` (or whose key does not match its certificate)
//! is treated as absent.
//!
//! Several instances may share one store (a shared volume): an order is made under a lock file
//! (`<store>/.acme/locks/<route>.lock`, created exclusively, its mtime refreshed while held,
//! stale after [`LOCK_STALE`]), and the others wait for it and load the result. The ordering
//! instance also writes its HTTP-01 answers to `<store>/.acme/challenges/<token>`, so that an
//! instance behind the same load balancer answers the CA's validation request for it.

use rustls::sign::CertifiedKey;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// A lock not refreshed for this long belongs to a crashed holder and may be taken over.
pub const LOCK_STALE: Duration = Duration::from_secs(30);
/// How often a held lock's mtime is refreshed.
pub const LOCK_REFRESH: Duration = Duration::from_secs(5);

/// One stored certificate.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The certificate chain, leaf first.
    pub cert_pem: String,
    pub key_pem: String,
    /// The names the certificate was ordered for.
    pub domains: Vec<String>,
    /// `notBefore` / `notAfter`, ms since the epoch.
    pub issued_ms: i64,
    pub expires_ms: i64,
    /// `acme` or `custom`.
    pub source: String,
}

/// A store rooted at a directory.
#[derive(Debug, Clone)]
pub struct DiskStore {
    root: PathBuf,
}

/// A route name as a directory name: letters, digits, `.`, `-` and `_` stay, the rest becomes
/// `_` (a name cannot climb out of the store).
pub fn dir_name(route: &str) -> String {
    let s: String = route
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect();
    match s.as_str() {
        "" | "." | ".." => format!("_{s}"),
        _ if s.starts_with('.') => format!("_{s}"),
        _ => s,
    }
}

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().iter().map(|x| format!("{x:02x}")).collect()
}

fn write_synced(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

impl DiskStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DiskStore { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn entry_dir(&self, route: &str, suffix: &str) -> PathBuf {
        self.root.join(format!("{}{suffix}", dir_name(route)))
    }

    /// Writes an entry crash-safely (see the module header).
    pub fn save(&self, route: &str, e: &Entry) -> io::Result<()> {
        fs::create_dir_all(&self.root)?;
        let (dir, new, old) = (self.entry_dir(route, ""), self.entry_dir(route, ".new"), self.entry_dir(route, ".old"));
        if new.exists() {
            fs::remove_dir_all(&new)?;
        }
        fs::create_dir(&new)?;
        write_synced(&new.join("cert.pem"), e.cert_pem.as_bytes(), 0o644)?;
        write_synced(&new.join("key.pem"), e.key_pem.as_bytes(), 0o600)?;
        let meta = serde_json::json!({
            "domain": e.domains.first(),
            "domains": e.domains,
            "issueDate": e.issued_ms,
            "expiryDate": e.expires_ms,
            "source": e.source,
            "certSha256": sha256_hex(e.cert_pem.as_bytes()),
        });
        write_synced(&new.join("meta.json"), meta.to_string().as_bytes(), 0o644)?;
        sync_dir(&new)?;
        if dir.exists() {
            if old.exists() {
                fs::remove_dir_all(&old)?;
            }
            fs::rename(&dir, &old)?;
            sync_dir(&self.root)?;
        }
        fs::rename(&new, &dir)?;
        sync_dir(&self.root)?;
        if old.exists() {
            fs::remove_dir_all(&old)?;
        }
        Ok(())
    }

    /// Reads an entry, with its signing identity (parsed and checked once, here). `Ok(None)`:
    /// there is none; `Err`: it is there but unusable (corrupt, torn, or its key does not
    /// match), which callers treat as absent after logging it.
    pub fn load(&self, route: &str) -> Result<Option<(Entry, Arc<CertifiedKey>)>, String> {
        let (dir, new, old) = (self.entry_dir(route, ""), self.entry_dir(route, ".new"), self.entry_dir(route, ".old"));
        if !dir.exists() {
            // A writer died between its two renames: take the complete new entry, else the old.
            if new.exists() && Self::read_dir(&new).is_ok() {
                let _ = fs::rename(&new, &dir);
            } else if old.exists() {
                let _ = fs::rename(&old, &dir);
            }
            if !dir.exists() {
                return Ok(None);
            }
        }
        Self::read_dir(&dir).map(Some)
    }

    fn read_dir(dir: &Path) -> Result<(Entry, Arc<CertifiedKey>), String> {
        let read =
            |name: &str| fs::read_to_string(dir.join(name)).map_err(|e| format!("{}: {e}", dir.join(name).display()));
        let (cert_pem, key_pem, meta) = (read("cert.pem")?, read("key.pem")?, read("meta.json")?);
        let meta: serde_json::Value =
            serde_json::from_str(&meta).map_err(|e| format!("{}: meta.json: {e}", dir.display()))?;
        if meta.get("certSha256").and_then(|v| v.as_str()) != Some(sha256_hex(cert_pem.as_bytes()).as_str()) {
            return Err(format!("{}: cert.pem does not match meta.json", dir.display()));
        }
        let key =
            crate::tls::certified_key(&cert_pem, &key_pem, None).map_err(|e| format!("{}: {e}", dir.display()))?;
        let (issued_ms, expires_ms) = crate::tls::validity_ms(&cert_pem)?;
        let domains = meta
            .get("domains")
            .and_then(|d| d.as_array())
            .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let source = meta.get("source").and_then(|s| s.as_str()).unwrap_or("acme").to_owned();
        Ok((Entry { cert_pem, key_pem, domains, issued_ms, expires_ms, source }, key))
    }

    fn acme_dir(&self, sub: &str) -> PathBuf {
        self.root.join(".acme").join(sub)
    }

    /// The stored credentials of an account (`key` names directory and e-mail).
    pub fn load_account(&self, key: &str) -> Option<String> {
        fs::read_to_string(self.acme_dir("accounts").join(format!("{key}.json"))).ok()
    }

    pub fn save_account(&self, key: &str, credentials: &str) -> io::Result<()> {
        let dir = self.acme_dir("accounts");
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
        write_synced(&tmp, credentials.as_bytes(), 0o600)?;
        fs::rename(&tmp, dir.join(format!("{key}.json")))?;
        sync_dir(&dir)
    }

    fn lock_path(&self, route: &str) -> PathBuf {
        self.acme_dir("locks").join(format!("{}.lock", dir_name(route)))
    }

    /// Takes the order lock of `route` if it is free (or stale); `Ok(false)`: another holder.
    pub fn try_lock(&self, route: &str) -> io::Result<bool> {
        let path = self.lock_path(route);
        fs::create_dir_all(path.parent().unwrap_or(&self.root))?;
        // The lock appears whole, naming its holder, or not at all: written to a file of this
        // process, then linked into place (which fails if the lock exists). A holder killed
        // between creating and writing it would otherwise leave an anonymous lock for
        // LOCK_STALE.
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        write_synced(&tmp, format!("{}\n", lock_holder(std::process::id())).as_bytes(), 0o644)?;
        let r = (|| {
            for _ in 0..2 {
                match fs::hard_link(&tmp, &path) {
                    Ok(()) => return Ok(true),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let age = fs::metadata(&path)
                            .and_then(|m| m.modified())
                            .ok()
                            .and_then(|t| SystemTime::now().duration_since(t).ok());
                        let dead = fs::read_to_string(&path).is_ok_and(|h| holder_is_dead(h.trim()));
                        if age.is_some_and(|a| a < LOCK_STALE) && !dead {
                            return Ok(false);
                        }
                        // Stale, its holder gone, or vanished meanwhile: take it over.
                        let _ = fs::remove_file(&path);
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(false)
        })();
        let _ = fs::remove_file(&tmp);
        r
    }

    /// Marks a held lock as alive.
    pub fn refresh_lock(&self, route: &str) {
        if let Ok(f) = OpenOptions::new().write(true).open(self.lock_path(route)) {
            let _ = f.set_modified(SystemTime::now());
        }
    }

    pub fn unlock(&self, route: &str) {
        let _ = fs::remove_file(self.lock_path(route));
    }

    /// Publishes an HTTP-01 answer for the other instances sharing this store. `token` is the
    /// CA's (base64url: [`is_token`] holds).
    pub fn save_challenge(&self, token: &str, key_authorization: &str) -> io::Result<()> {
        let dir = self.acme_dir("challenges");
        fs::create_dir_all(&dir)?;
        let tmp = dir.join(format!(".{token}.{}.tmp", std::process::id()));
        write_synced(&tmp, key_authorization.as_bytes(), 0o644)?;
        fs::rename(&tmp, dir.join(token))
    }

    pub fn remove_challenge(&self, token: &str) {
        let _ = fs::remove_file(self.acme_dir("challenges").join(token));
    }

    /// Another instance's HTTP-01 answer for `token`, if it published one.
    pub fn load_challenge(&self, token: &str) -> Option<String> {
        if !is_token(token) {
            return None;
        }
        fs::read_to_string(self.acme_dir("challenges").join(token)).ok()
    }
}

/// What a lock file says of its holder: `<pid> <pid namespace> <boot id>`. A holder on this
/// machine and in this PID namespace can be seen to be dead at once (a restarted process does not
/// wait [`LOCK_STALE`] for the lock its crashed predecessor left); any other waits for staleness.
fn lock_holder(pid: u32) -> String {
    match this_machine() {
        Some((ns, boot)) => format!("{pid} {ns} {boot}"),
        None => pid.to_string(),
    }
}

/// This process's PID namespace and the machine's boot id, when both can be read.
fn this_machine() -> Option<(String, String)> {
    let ns = fs::read_link("/proc/self/ns/pid").ok()?.display().to_string();
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?.trim().to_owned();
    (!ns.is_empty() && !boot.is_empty()).then_some((ns, boot))
}

fn holder_is_dead(holder: &str) -> bool {
    let Some(pid) = holder.split(' ').next().and_then(|p| p.parse::<u32>().ok()) else { return false };
    let Some((ns, boot)) = this_machine() else { return false };
    holder == format!("{pid} {ns} {boot}") && pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether `s` can be an ACME token (RFC 8555 §8.1: base64url, at least 128 bits): anything else
/// is never looked up in the store, so a request path cannot name another file.
pub fn is_token(s: &str) -> bool {
    (16..=256).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "spn-store-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
        ));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn loaded(s: &DiskStore, route: &str) -> Option<Entry> {
        s.load(route).unwrap().map(|(e, _)| e)
    }

    fn entry(name: &str) -> Entry {
        let k = rcgen::KeyPair::generate().unwrap();
        let c = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap().self_signed(&k).unwrap();
        let cert_pem = c.pem();
        let (issued_ms, expires_ms) = crate::tls::validity_ms(&cert_pem).unwrap();
        Entry {
            cert_pem,
            key_pem: k.serialize_pem(),
            domains: vec![name.to_owned()],
            issued_ms,
            expires_ms,
            source: "acme".into(),
        }
    }

    #[test]
    fn save_load_replace_and_key_mode() {
        let root = tmp();
        let s = DiskStore::new(&root);
        assert_eq!(loaded(&s, "web"), None);
        let a = entry("a.test");
        s.save("web", &a).unwrap();
        assert_eq!(loaded(&s, "web"), Some(a));
        let b = entry("a.test");
        s.save("web", &b).unwrap();
        assert_eq!(loaded(&s, "web"), Some(b));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(root.join("web/key.pem")).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!root.join("web.new").exists() && !root.join("web.old").exists());
        fs::remove_dir_all(root).unwrap();
    }

    /// Every state a writer can die in loads as the old entry or the new one, never a torn one.
    #[test]
    fn crashed_writes_recover_old_or_new() {
        let root = tmp();
        let s = DiskStore::new(&root);
        let (old, new) = (entry("a.test"), entry("a.test"));
        // Died while writing the new entry: the old one stays.
        s.save("r", &old).unwrap();
        fs::create_dir(root.join("r.new")).unwrap();
        fs::write(root.join("r.new/cert.pem"), &new.cert_pem).unwrap();
        assert_eq!(loaded(&s, "r"), Some(old.clone()));
        // Died after moving the old entry aside, before moving the new one in.
        fs::remove_dir_all(root.join("r.new")).unwrap();
        s.save("tmp", &new).unwrap();
        fs::rename(root.join("r"), root.join("r.old")).unwrap();
        fs::rename(root.join("tmp"), root.join("r.new")).unwrap();
        assert_eq!(loaded(&s, "r"), Some(new.clone()));
        // The same, but the new entry was incomplete: the old one comes back.
        fs::remove_dir_all(root.join("r")).unwrap();
        fs::remove_dir_all(root.join("r.old")).unwrap();
        s.save("r2", &old).unwrap();
        fs::rename(root.join("r2"), root.join("r.old")).unwrap();
        fs::create_dir(root.join("r.new")).unwrap();
        fs::write(root.join("r.new/key.pem"), &new.key_pem).unwrap();
        assert_eq!(loaded(&s, "r"), Some(old.clone()));
        // A corrupt entry is an error (treated as absent by callers), not a panic.
        fs::write(root.join("r/cert.pem"), "garbage").unwrap();
        assert!(s.load("r").is_err());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn locks_are_exclusive_and_stale_ones_are_taken_over() {
        let root = tmp();
        let s = DiskStore::new(&root);
        assert!(s.try_lock("r").unwrap());
        assert!(!s.try_lock("r").unwrap());
        let path = s.lock_path("r");
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_modified(SystemTime::now() - LOCK_STALE - Duration::from_secs(1)).unwrap();
        assert!(s.try_lock("r").unwrap(), "a stale lock is taken over");
        s.unlock("r");
        assert!(s.try_lock("r").unwrap());
        // A fresh lock of a dead process of this machine is taken over at once; one of a live
        // process (ours) or of another machine is not.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        fs::write(&path, lock_holder(dead)).unwrap();
        assert!(s.try_lock("r").unwrap(), "the lock of a dead holder is taken over");
        assert!(!s.try_lock("r").unwrap(), "our own live lock is not");
        fs::write(&path, format!("{dead} pid:[1] elsewhere")).unwrap();
        assert!(!s.try_lock("r").unwrap(), "another machine's lock waits for staleness");
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn challenges_are_shared_and_only_tokens_are_read() {
        let root = tmp();
        let s = DiskStore::new(&root);
        let token = "LoqXcYV8q5ONbJQxbmR7SCTNo3tiAXDfowyjxAjEuX0";
        assert_eq!(s.load_challenge(token), None);
        s.save_challenge(token, "key.auth").unwrap();
        assert_eq!(DiskStore::new(&root).load_challenge(token).as_deref(), Some("key.auth"));
        s.remove_challenge(token);
        assert_eq!(s.load_challenge(token), None);
        fs::write(root.join(".acme/challenges/short"), "x").unwrap();
        assert_eq!(s.load_challenge("short"), None);
        assert!(!is_token("../../accounts/aaaaaaaaaaaaaaaa") && !is_token("a.b.cccccccccccccccc"));
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn route_names_stay_inside_the_store() {
        assert_eq!(dir_name("web"), "web");
        assert_eq!(dir_name("../etc"), "_.._etc");
        assert_eq!(dir_name("a/b c"), "a_b_c");
        assert_eq!(dir_name(".."), "_..");
        assert_eq!(dir_name(""), "_");
    }
}
