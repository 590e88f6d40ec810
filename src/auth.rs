//! Users and logins: the users file (argon2id password hashes and roles),
//! verifying a password, setting one, and throttling failed attempts.
//!
//! This module does not know about HTTP or sessions; `transport` asks it
//! whether a login is allowed and correct.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use dashmap::DashMap;
use serde::{Deserialize, Serialize};

/// One user of the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub id: String,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// argon2id PHC string (`$argon2id$v=19$…`), set by `switchboard passwd`.
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    users: Vec<User>,
}

/// A problem with the users file.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape.
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    /// Hashing failed (should not happen).
    #[error("could not hash the password: {0}")]
    Hash(String),
}

/// The users of the server, by id.
#[derive(Debug, Default, Clone)]
pub struct Users {
    by_id: HashMap<String, User>,
}

impl Users {
    /// Reads the users file; a missing file means no users (every project
    /// is then only usable if public).
    pub fn load(path: &Path) -> Result<Users, AuthError> {
        let file = read_file(path)?;
        Ok(Users {
            by_id: file.users.into_iter().map(|u| (u.id.clone(), u)).collect(),
        })
    }

    pub fn get(&self, id: &str) -> Option<&User> {
        self.by_id.get(id)
    }

    pub fn roles_of(&self, id: &str) -> &[String] {
        self.by_id.get(id).map_or(&[], |u| u.roles.as_slice())
    }

    /// The user, if the password is theirs. An unknown user costs the same
    /// hashing time as a known one, so timing does not reveal which ids exist.
    pub fn verify(&self, id: &str, password: &str) -> Option<&User> {
        let user = self.by_id.get(id);
        let hash = user.map_or(DUMMY_HASH, |u| u.password.as_str());
        let matches = PasswordHash::new(hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false);
        user.filter(|_| matches)
    }
}

/// A valid hash of a random password, verified against when the user does
/// not exist.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$RdescudvJCsgt3ub+b+dWRWJTmaaJObG+XKpLrZdjk0";

fn read_file(path: &Path) -> Result<UsersFile, AuthError> {
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).map_err(|e| AuthError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        }),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
        Err(source) => Err(AuthError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// An argon2id PHC string for `password`, with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// Sets a user's password in the users file, adding the user if new.
pub fn set_password(
    path: &Path,
    id: &str,
    password: &str,
    name: Option<&str>,
    roles: Option<Vec<String>>,
) -> Result<(), AuthError> {
    let mut file = read_file(path)?;
    let hash = hash_password(password)?;
    match file.users.iter_mut().find(|u| u.id == id) {
        Some(user) => {
            user.password = hash;
            if let Some(name) = name {
                user.name = name.to_string();
            }
            if let Some(roles) = roles {
                user.roles = roles;
            }
        }
        None => file.users.push(User {
            id: id.to_string(),
            name: name.unwrap_or(id).to_string(),
            password: hash,
            roles: roles.unwrap_or_default(),
            email: None,
            first_name: None,
            last_name: None,
        }),
    }
    let text = toml::to_string_pretty(&file).map_err(|e| AuthError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| AuthError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Failed attempts allowed before a key is locked out.
const FREE_FAILURES: u32 = 5;
/// The longest lock-out; each further failure doubles it up to this.
const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Failures older than this are forgotten.
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Counts failed logins per key (`user:<id>`, `address:<ip>`) and locks a
/// key out, for longer after each further failure.
#[derive(Debug, Default)]
pub struct Throttle {
    failures: DashMap<String, Failures>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Throttle {
    /// `Err(wait)` while `key` is locked out.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(failures) = self.failures.get(key).map(|f| *f) else {
            return Ok(());
        };
        if failures.last.elapsed() > FAILURE_WINDOW || failures.count < FREE_FAILURES {
            return Ok(());
        }
        let lockout = lockout_after(failures.count);
        let elapsed = failures.last.elapsed();
        if elapsed < lockout {
            Err(lockout - elapsed)
        } else {
            Ok(())
        }
    }

    pub fn failed(&self, key: &str) {
        let mut entry = self.failures.entry(key.to_string()).or_insert(Failures {
            count: 0,
            last: Instant::now(),
        });
        if entry.last.elapsed() > FAILURE_WINDOW {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last = Instant::now();
    }

    pub fn succeeded(&self, key: &str) {
        self.failures.remove(key);
    }
}

/// 1 s after the sixth failure, doubling with each one after.
fn lockout_after(count: u32) -> Duration {
    let doublings = count.saturating_sub(FREE_FAILURES).min(20);
    Duration::from_secs(1u64 << doublings).min(MAX_LOCKOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_wrong_passwords_do_not() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let users = Users {
            by_id: HashMap::from([(
                "ann".into(),
                User {
                    id: "ann".into(),
                    name: "Ann".into(),
                    password: hash,
                    roles: vec!["operator".into()],
                    email: None,
                    first_name: None,
                    last_name: None,
                },
            )]),
        };
        assert!(users.verify("ann", "correct horse").is_some());
        assert!(users.verify("ann", "wrong").is_none());
        assert!(users.verify("bob", "correct horse").is_none());
        assert_eq!(users.roles_of("ann"), ["operator"]);
    }

    #[test]
    fn the_dummy_hash_parses() {
        assert!(PasswordHash::new(DUMMY_HASH).is_ok());
    }

    #[test]
    fn set_password_creates_and_updates() {
        let dir = std::env::temp_dir().join(format!("sb-users-{}", std::process::id()));
        let path = dir.join("users.toml");
        set_password(
            &path,
            "ann",
            "one",
            Some("Ann"),
            Some(vec!["operator".into()]),
        )
        .unwrap();
        set_password(&path, "ann", "two", None, None).unwrap();
        let users = Users::load(&path).unwrap();
        assert!(users.verify("ann", "two").is_some());
        assert!(users.verify("ann", "one").is_none());
        assert_eq!(users.get("ann").unwrap().roles, ["operator"], "roles kept");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn throttling_locks_out_after_the_free_failures() {
        let throttle = Throttle::default();
        for _ in 0..FREE_FAILURES {
            assert!(throttle.check("user:ann").is_ok());
            throttle.failed("user:ann");
        }
        assert!(
            throttle.check("user:ann").is_err(),
            "locked after {FREE_FAILURES} failures"
        );
        assert!(throttle.check("user:bob").is_ok(), "other keys are not");
        throttle.succeeded("user:ann");
        assert!(throttle.check("user:ann").is_ok());
        assert_eq!(lockout_after(6), Duration::from_secs(2));
        assert_eq!(lockout_after(100), MAX_LOCKOUT);
    }
}
