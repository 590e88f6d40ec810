//! Users and logins: the users file (argon2id password hashes and roles),
//! verifying a password, setting one, and throttling failed attempts.
//!
//! This module does not know about HTTP or sessions; `transport` asks it
//! whether a login is allowed and correct.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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
        release_freed_memory();
        user.filter(|_| matches)
    }
}

/// Gives the hash's ~19 MiB back to the system. glibc raises its mmap
/// threshold after the first large free, so later hash buffers come from
/// the hashing thread's own arena and stay resident there: six logins on
/// six blocking threads kept 114 MB. Trimming after each check keeps the
/// resident size at the hashes running now.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it takes
    // the allocator's own locks and touches no memory the program uses.
    unsafe {
        libc::malloc_trim(0);
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
    write_private(path, text.as_bytes()).map_err(|source| AuthError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file that only its owner may read (0600 when created: it holds
/// password hashes). An existing file keeps its mode.
fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents)
}

/// `Some(mode)` when the file at `path` can be read by users other than its
/// owner (group or others), as a warning at start wants to say.
pub fn readable_by_others(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o044 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Failed attempts of one user from one address before that pair is locked
/// out. The lock-out is keyed on both, so that nobody can lock a user out
/// from another address.
const FREE_FAILURES: u32 = 5;
/// Failed attempts from one address, for any users, before the address is
/// locked out. Higher than a user's: several people may share an address
/// (NAT, a proxy). Successes in between do not reset it, so one valid
/// account does not let an address spray passwords at the others.
const ADDRESS_FREE_FAILURES: u32 = 10;
/// Failed attempts on one user, from any address, before each further
/// attempt on that user is slowed down (never refused: a refusal would let
/// anyone lock the user out).
const USER_FREE_FAILURES: u32 = 5;
/// The first delay past [`USER_FREE_FAILURES`]; each further failure doubles
/// it up to [`MAX_USER_DELAY`].
const USER_DELAY_STEP: Duration = Duration::from_millis(500);
const MAX_USER_DELAY: Duration = Duration::from_secs(8);
/// The longest lock-out; each further failure doubles it up to this.
const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Failures older than this are forgotten.
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Past this many counters, the forgotten ones are dropped (a stream of
/// made-up user names would otherwise grow the table).
const MAX_COUNTERS: usize = 10_000;
/// The part of a user name a counter is keyed on: real ids are short, and a
/// 16 KiB made-up one should not cost 16 KiB of memory.
const MAX_KEYED_NAME: usize = 128;

/// Guards password checks (logins and challenge answers).
///
/// Every attempt is counted as a failure *before* its password is hashed
/// (a success takes its count back), so a burst of concurrent attempts
/// cannot slip past the lock-out while the first ones are being hashed.
/// One attempt per address runs at a time, and at most one per core is
/// hashing (argon2 takes ~19 MiB each); anything else is refused at once.
#[derive(Debug)]
pub struct Throttle {
    failures: DashMap<String, Failures>,
    /// Addresses with an attempt running.
    in_flight: DashMap<String, ()>,
    hashing: Arc<Semaphore>,
}

impl Default for Throttle {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Throttle::with_hashing_slots(cores)
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Why an attempt is refused without checking its password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Too many failures: try again after this long.
    LockedOut(Duration),
    /// Another attempt from the same address is running, or every hashing
    /// slot is busy: try again in a moment.
    Busy,
}

impl Refused {
    /// What `Retry-After` says, in whole seconds.
    pub fn retry_after_secs(self) -> u64 {
        match self {
            Refused::LockedOut(wait) => wait.as_secs().max(1),
            Refused::Busy => 1,
        }
    }
}

/// One login attempt admitted by the [`Throttle`]; dropping it without
/// [`Attempt::succeeded`] leaves it counted as a failure.
#[derive(Debug)]
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    address_key: String,
    pair_key: String,
    user_key: String,
    delay: Duration,
    /// Counted as a failure (a hashing slot was taken).
    counted: bool,
}

/// A hashing slot: hold it until the hash is done, even if the client has
/// gone (the hash runs on a thread of its own and finishes anyway).
#[derive(Debug)]
pub struct HashingSlot {
    _permit: OwnedSemaphorePermit,
}

impl Throttle {
    /// A throttle that lets `slots` passwords be hashed at once.
    pub fn with_hashing_slots(slots: usize) -> Throttle {
        Throttle {
            failures: DashMap::new(),
            in_flight: DashMap::new(),
            hashing: Arc::new(Semaphore::new(slots.max(1))),
        }
    }

    /// Admits an attempt of `user` from `address`, or says why not. The
    /// attempt is not counted yet: see [`Attempt::start_check`].
    pub fn begin(&self, user: &str, address: &str) -> Result<Attempt<'_>, Refused> {
        let user: String = user.chars().take(MAX_KEYED_NAME).collect();
        let address_key = format!("address:{address}");
        match self.in_flight.entry(address_key.clone()) {
            Entry::Occupied(_) => return Err(Refused::Busy),
            Entry::Vacant(vacant) => {
                vacant.insert(());
            }
        }
        let mut attempt = Attempt {
            throttle: self,
            pair_key: format!("user:{user}@{address}"),
            user_key: format!("user:{user}"),
            address_key,
            delay: Duration::ZERO,
            counted: false,
        };
        self.locked_out(&attempt.address_key, ADDRESS_FREE_FAILURES)
            .or_else(|| self.locked_out(&attempt.pair_key, FREE_FAILURES))
            .map_or(Ok(()), |wait| Err(Refused::LockedOut(wait)))?;
        attempt.delay = user_delay(self.recent_failures(&attempt.user_key));
        Ok(attempt)
    }

    /// How long `key` is still locked out, if it is.
    fn locked_out(&self, key: &str, free: u32) -> Option<Duration> {
        let count = self.recent_failures(key);
        if count < free {
            return None;
        }
        let last = self.failures.get(key)?.last;
        lockout_after(count - free + 1).checked_sub(last.elapsed())
    }

    fn recent_failures(&self, key: &str) -> u32 {
        self.failures
            .get(key)
            .filter(|f| f.last.elapsed() <= FAILURE_WINDOW)
            .map_or(0, |f| f.count)
    }

    fn count_failure(&self, key: &str) {
        if self.failures.len() > MAX_COUNTERS {
            self.failures
                .retain(|_, failures| failures.last.elapsed() <= FAILURE_WINDOW);
        }
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

    fn uncount_failure(&self, key: &str) {
        if let Some(mut entry) = self.failures.get_mut(key) {
            entry.count = entry.count.saturating_sub(1);
        }
    }

    fn forget(&self, key: &str) {
        self.failures.remove(key);
    }
}

impl Attempt<'_> {
    /// How long to wait before checking the password: the user has failed
    /// often lately, from anywhere.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Takes a hashing slot and counts the attempt as a failure until it
    /// [`succeeded`](Attempt::succeeded); `Busy` when every slot is taken.
    pub fn start_check(&mut self) -> Result<HashingSlot, Refused> {
        let permit = self
            .throttle
            .hashing
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refused::Busy)?;
        for key in [&self.address_key, &self.pair_key, &self.user_key] {
            self.throttle.count_failure(key);
        }
        self.counted = true;
        Ok(HashingSlot { _permit: permit })
    }

    /// The password was right: the user's failures are forgiven, the
    /// address's earlier ones are not.
    pub fn succeeded(self) {
        if self.counted {
            self.throttle.uncount_failure(&self.address_key);
        }
        self.throttle.forget(&self.pair_key);
        self.throttle.forget(&self.user_key);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        self.throttle.in_flight.remove(&self.address_key);
    }
}

/// 1 s for the first attempt past the free ones, doubling with each one after.
fn lockout_after(past_free: u32) -> Duration {
    let doublings = past_free.saturating_sub(1).min(20);
    Duration::from_secs(1u64 << doublings).min(MAX_LOCKOUT)
}

/// Nothing for the first [`USER_FREE_FAILURES`], then doubling.
fn user_delay(failures: u32) -> Duration {
    if failures < USER_FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (failures - USER_FREE_FAILURES).min(10);
    (USER_DELAY_STEP * (1u32 << doublings)).min(MAX_USER_DELAY)
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
        assert_eq!(readable_by_others(&path), None, "created 0600");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Runs `failures` wrong attempts of `user` from `address`.
    fn fail(throttle: &Throttle, user: &str, address: &str, failures: u32) {
        for _ in 0..failures {
            let mut attempt = throttle.begin(user, address).unwrap();
            attempt.start_check().unwrap();
        }
    }

    #[test]
    fn a_user_is_locked_out_from_the_failing_address_only() {
        let throttle = Throttle::default();
        fail(&throttle, "ann", "10.0.0.1", FREE_FAILURES);
        assert!(matches!(
            throttle.begin("ann", "10.0.0.1"),
            Err(Refused::LockedOut(_))
        ));
        let elsewhere = throttle.begin("ann", "10.0.0.2").expect("not locked out");
        assert_eq!(elsewhere.delay(), USER_DELAY_STEP, "only slowed down");
        elsewhere.succeeded();
        assert_eq!(
            throttle.begin("ann", "10.0.0.3").unwrap().delay(),
            Duration::ZERO
        );
        assert_eq!(lockout_after(2), Duration::from_secs(2));
        assert_eq!(lockout_after(100), MAX_LOCKOUT);
    }

    #[test]
    fn successes_do_not_reset_an_address() {
        let throttle = Throttle::default();
        for _ in 0..ADDRESS_FREE_FAILURES / 2 {
            let mut own = throttle.begin("me", "10.0.0.1").unwrap();
            own.start_check().unwrap();
            own.succeeded();
            fail(&throttle, "u1", "10.0.0.1", 1);
            fail(&throttle, "u2", "10.0.0.1", 1);
        }
        assert!(matches!(
            throttle.begin("someone", "10.0.0.1"),
            Err(Refused::LockedOut(_))
        ));
    }

    #[test]
    fn one_attempt_per_address_and_one_hash_per_slot() {
        let throttle = Throttle::with_hashing_slots(1);
        let mut first = throttle.begin("ann", "10.0.0.1").unwrap();
        assert_eq!(
            throttle.begin("bob", "10.0.0.1").unwrap_err(),
            Refused::Busy
        );
        let slot = first.start_check().unwrap();
        let mut other = throttle.begin("bob", "10.0.0.2").unwrap();
        assert_eq!(other.start_check().unwrap_err(), Refused::Busy);
        drop(first);
        let mut again = throttle.begin("bob", "10.0.0.1").expect("address freed");
        assert_eq!(
            again.start_check().unwrap_err(),
            Refused::Busy,
            "hash still running"
        );
        drop(slot);
        assert!(again.start_check().is_ok(), "slot freed");
    }
}
