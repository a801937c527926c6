//! Who is behind an address: its autonomous system and its country, read
//! from MaxMind DB files (`--asn-db`, `--country-db`: GeoLite2, DB-IP Lite
//! and others write the format).
//!
//! [`Owners`] holds the databases in force (replaced whole on SIGHUP, the
//! previous ones kept when a new file is bad) and the organisations' names
//! seen so far. An [`Attributor`], owned by the thread that closes panes,
//! looks each distinct address of a pane up once (remembering recent
//! answers): the window gives each pane its owners from it
//! (`window::owners`). This module knows addresses, not panes.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use maxminddb::Reader;
use rustc_hash::FxHashMap;

use crate::vocab::{Country, IpKey, Subject};

/// The owner of an address: its autonomous system (0 when unknown) and its
/// country (`--` when unknown).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Owner {
    pub asn: u32,
    pub country: Country,
}

/// How answers group owners: `group=asn` or `group=country`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OwnerKind {
    Asn,
    Country,
}

impl OwnerKind {
    pub fn parse(text: &str) -> Option<OwnerKind> {
        match text {
            "asn" => Some(OwnerKind::Asn),
            "country" => Some(OwnerKind::Country),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OwnerKind::Asn => "asn",
            OwnerKind::Country => "country",
        }
    }

    /// The option whose database answers this kind.
    pub fn option(self) -> &'static str {
        match self {
            OwnerKind::Asn => "--asn-db",
            OwnerKind::Country => "--country-db",
        }
    }

    /// The subject a key of this kind names (`AS16509`, `DE`).
    pub fn subject(self, key: u32) -> Subject {
        match self {
            OwnerKind::Asn => Subject::Asn(key),
            OwnerKind::Country => Subject::Country(Country::from_bits(key as u16)),
        }
    }

    /// The key a subject of this kind holds.
    pub fn key_of_subject(self, subject: Subject) -> Option<u32> {
        match (self, subject) {
            (OwnerKind::Asn, Subject::Asn(asn)) => Some(asn),
            (OwnerKind::Country, Subject::Country(c)) => Some(u32::from(c.to_bits())),
            _ => None,
        }
    }

    /// The owner's key of this kind, as a number (packed keys).
    pub fn key_of(self, owner: Owner) -> u32 {
        match self {
            OwnerKind::Asn => owner.asn,
            OwnerKind::Country => u32::from(owner.country.to_bits()),
        }
    }
}

/// A database that could not be used, naming the option and the file.
#[derive(Debug, thiserror::Error)]
#[error("{option} {}: {reason}", path.display())]
pub struct DbError {
    pub option: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

/// Addresses looked up in a file before it is taken: both families, both
/// halves of the address space.
const PROBES: [IpAddr; 4] = [
    IpAddr::V4(std::net::Ipv4Addr::new(1, 1, 1, 1)),
    IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 7)),
    IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
];

/// One open database file.
struct Database {
    path: PathBuf,
    reader: Reader<Vec<u8>>,
    /// What the file says it is (`GeoLite2-ASN`, `DBIP-Country-Lite`, ...).
    kind: String,
    /// When the file was built, as it says.
    built: u64,
}

impl Database {
    fn open(kind: OwnerKind, path: &Path) -> Result<Database, DbError> {
        let error = |reason: String| DbError {
            option: kind.option(),
            path: path.to_path_buf(),
            reason,
        };
        let reader = Reader::open_readfile(path)
            .map_err(|e| error(format!("not a MaxMind DB file: {e}")))?;
        // The search tree and the records read back: a file cut short or
        // overwritten fails here, not at the first pane.
        for probe in PROBES {
            let found = reader
                .lookup(probe)
                .map_err(|e| error(format!("not a valid MaxMind DB file: {e}")))?;
            found
                .decode::<serde::de::IgnoredAny>()
                .map_err(|e| error(format!("not a valid MaxMind DB file: {e}")))?;
        }
        let metadata = reader.metadata();
        let (kind_name, built) = (metadata.database_type.clone(), metadata.build_epoch);
        Ok(Database {
            path: path.to_path_buf(),
            reader,
            kind: kind_name,
            built,
        })
    }
}

/// The databases in force.
#[derive(Default)]
pub struct Databases {
    asn: Option<Database>,
    country: Option<Database>,
}

/// What the databases in force are, for the status.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DatabaseInfo {
    pub option: &'static str,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub build_epoch: u64,
}

impl Databases {
    /// Opens the files given; an unreadable or invalid one is an error
    /// naming its option.
    pub fn open(asn: Option<&Path>, country: Option<&Path>) -> Result<Databases, DbError> {
        Ok(Databases {
            asn: asn.map(|p| Database::open(OwnerKind::Asn, p)).transpose()?,
            country: country
                .map(|p| Database::open(OwnerKind::Country, p))
                .transpose()?,
        })
    }

    pub fn has(&self, kind: OwnerKind) -> bool {
        match kind {
            OwnerKind::Asn => self.asn.is_some(),
            OwnerKind::Country => self.country.is_some(),
        }
    }

    pub fn info(&self) -> Vec<DatabaseInfo> {
        let info = |option, db: &Database| DatabaseInfo {
            option,
            path: db.path.display().to_string(),
            kind: db.kind.clone(),
            build_epoch: db.built,
        };
        self.asn
            .iter()
            .map(|db| info("--asn-db", db))
            .chain(self.country.iter().map(|db| info("--country-db", db)))
            .collect()
    }
}

/// The organisation's name, as GeoLite2-ASN and DB-IP write it.
#[derive(serde::Deserialize)]
struct AsnRecord<'a> {
    autonomous_system_number: Option<u32>,
    #[serde(borrow)]
    autonomous_system_organization: Option<&'a str>,
}

#[derive(serde::Deserialize)]
struct CountryField<'a> {
    #[serde(borrow)]
    iso_code: Option<&'a str>,
}

/// The country fields of GeoLite2-Country/City and DB-IP Country records:
/// where the address is, else where its network is registered.
#[derive(serde::Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow)]
    country: Option<CountryField<'a>>,
    #[serde(borrow)]
    registered_country: Option<CountryField<'a>>,
}

/// The databases in force and the organisations' names: shared by ingest
/// (which looks addresses up), the routes (which name organisations) and
/// the SIGHUP handler (which replaces the databases).
pub struct Owners {
    asn_path: Option<PathBuf>,
    country_path: Option<PathBuf>,
    databases: ArcSwap<Databases>,
    /// Bumped on every reload: attributors forget what they remembered.
    generation: AtomicU64,
    orgs: Mutex<FxHashMap<u32, Arc<str>>>,
}

impl std::fmt::Debug for Owners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Owners")
            .field("asn_path", &self.asn_path)
            .field("country_path", &self.country_path)
            .finish_non_exhaustive()
    }
}

impl Owners {
    /// The databases of `--asn-db` and `--country-db`; `None` when neither
    /// is given.
    pub fn open(
        asn: Option<PathBuf>,
        country: Option<PathBuf>,
    ) -> Result<Option<Arc<Owners>>, DbError> {
        if asn.is_none() && country.is_none() {
            return Ok(None);
        }
        let databases = Databases::open(asn.as_deref(), country.as_deref())?;
        Ok(Some(Arc::new(Owners {
            asn_path: asn,
            country_path: country,
            databases: ArcSwap::from_pointee(databases),
            generation: AtomicU64::new(0),
            orgs: Mutex::default(),
        })))
    }

    /// Reads both files again. When either is bad, the databases in force
    /// stay (both of them) and the error names the bad one.
    pub fn reload(&self) -> Result<Vec<DatabaseInfo>, DbError> {
        let databases = Databases::open(self.asn_path.as_deref(), self.country_path.as_deref())?;
        let info = databases.info();
        self.databases.store(Arc::new(databases));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(info)
    }

    pub fn has(&self, kind: OwnerKind) -> bool {
        self.databases.load().has(kind)
    }

    pub fn info(&self) -> Vec<DatabaseInfo> {
        self.databases.load().info()
    }

    /// The organisation of `asn`, as the newest database naming it says.
    pub fn org(&self, asn: u32) -> Option<Arc<str>> {
        self.orgs.lock().ok()?.get(&asn).cloned()
    }

    /// An attributor for the thread that closes panes, remembering at most
    /// about 1/32 of `budget` bytes of answers (the counting state's
    /// `--memory-limit`; between 4,096 and a million addresses).
    pub fn attributor(self: &Arc<Self>, budget: usize) -> Attributor {
        Attributor {
            remembered: (budget / 32 / REMEMBERED_BYTES).clamp(4096, 1 << 20),
            owners: self.clone(),
            databases: self.databases.load_full(),
            generation: self.generation.load(Ordering::Acquire),
            addresses: FxHashMap::default(),
            asn_records: FxHashMap::default(),
            country_records: FxHashMap::default(),
        }
    }

    fn named(&self, asn: u32, org: &str) {
        if let Ok(mut orgs) = self.orgs.lock()
            && orgs.get(&asn).is_none_or(|known| &**known != org)
        {
            orgs.insert(asn, Arc::from(org));
        }
    }
}

/// What one remembered address takes (key, owner, table slack).
const REMEMBERED_BYTES: usize = 32;

/// Looks addresses up for one thread: each distinct address once (until
/// as many as it may remember are held, or the databases are reloaded),
/// each record decoded once.
pub struct Attributor {
    owners: Arc<Owners>,
    /// Addresses remembered before starting afresh.
    remembered: usize,
    databases: Arc<Databases>,
    generation: u64,
    addresses: FxHashMap<IpKey, Owner>,
    /// Records by their place in the file, decoded once: AS numbers and
    /// countries.
    asn_records: FxHashMap<usize, u32>,
    country_records: FxHashMap<usize, Country>,
}

impl std::fmt::Debug for Attributor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attributor")
            .field("remembered", &self.addresses.len())
            .finish_non_exhaustive()
    }
}

impl Attributor {
    /// Takes up the databases in force when they were reloaded.
    pub fn refresh(&mut self) {
        let generation = self.owners.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.generation = generation;
            self.databases = self.owners.databases.load_full();
            self.addresses.clear();
            self.asn_records.clear();
            self.country_records.clear();
        }
    }

    /// The owner of `ip` in the databases this attributor reads.
    pub fn owner(&mut self, ip: IpKey) -> Owner {
        if let Some(owner) = self.addresses.get(&ip) {
            return *owner;
        }
        if self.addresses.len() >= self.remembered {
            self.addresses.clear();
        }
        let addr = ip.addr();
        let owner = Owner {
            asn: self.asn(addr),
            country: self.country(addr),
        };
        self.addresses.insert(ip, owner);
        owner
    }

    fn asn(&mut self, addr: IpAddr) -> u32 {
        let Some(db) = &self.databases.asn else {
            return 0;
        };
        let Ok(found) = db.reader.lookup(addr) else {
            return 0;
        };
        let Some(offset) = found.offset() else {
            return 0;
        };
        if let Some(asn) = self.asn_records.get(&offset) {
            return *asn;
        }
        let record: Option<AsnRecord<'_>> = found.decode().ok().flatten();
        let asn = record.as_ref().and_then(|r| r.autonomous_system_number);
        let asn = asn.unwrap_or(0);
        if let Some(org) = record.and_then(|r| r.autonomous_system_organization)
            && asn != 0
        {
            self.owners.named(asn, org);
        }
        self.asn_records.insert(offset, asn);
        asn
    }

    fn country(&mut self, addr: IpAddr) -> Country {
        let Some(db) = &self.databases.country else {
            return Country::UNKNOWN;
        };
        let Ok(found) = db.reader.lookup(addr) else {
            return Country::UNKNOWN;
        };
        let Some(offset) = found.offset() else {
            return Country::UNKNOWN;
        };
        if let Some(country) = self.country_records.get(&offset) {
            return *country;
        }
        let record: Option<CountryRecord<'_>> = found.decode().ok().flatten();
        let country = record
            .and_then(|r| {
                let here = r.country.and_then(|f| f.iso_code);
                here.or(r.registered_country.and_then(|f| f.iso_code))
            })
            .and_then(Country::parse)
            .unwrap_or(Country::UNKNOWN);
        self.country_records.insert(offset, country);
        country
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Small databases for tests, written by `scripts/make-mmdb.py` (the
    //! test venv's `mmdb-writer`).

    use std::path::{Path, PathBuf};

    /// The Python of the test venv, or the system's.
    fn python() -> PathBuf {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python");
        if venv.exists() {
            venv
        } else {
            PathBuf::from("python3")
        }
    }

    /// Writes a database of `kind` (`asn` or `country`) with `entries`
    /// (`203.0.113.0/24=64500:ORG` or `203.0.113.0/24=DE`) to `path`.
    pub fn write(kind: &str, path: &Path, entries: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-mmdb.py");
        let status = std::process::Command::new(python())
            .arg(script)
            .arg(kind)
            .arg(path)
            .args(entries)
            .status()
            .expect("python runs (scripts/setup.sh makes the test venv with mmdb-writer)");
        assert!(status.success(), "make-mmdb.py {kind} failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::parse_ip;

    fn databases(dir: &Path) -> (PathBuf, PathBuf) {
        let (asn, country) = (dir.join("asn.mmdb"), dir.join("country.mmdb"));
        testing::write(
            "asn",
            &asn,
            &[
                "203.0.113.0/24=64500:EXAMPLE-NET",
                "2001:db8::/32=64501:V6-NET",
            ],
        );
        testing::write(
            "country",
            &country,
            &["203.0.113.0/25=DE", "2001:db8::/32=NL"],
        );
        (asn, country)
    }

    #[test]
    fn addresses_are_looked_up_in_both_databases() {
        let dir = tempdir();
        let (asn, country) = databases(&dir);
        let owners = Owners::open(Some(asn), Some(country))
            .expect("valid files")
            .expect("two databases");
        let mut attributor = owners.attributor(1 << 30);
        let owner = |a: &mut Attributor, ip: &str| a.owner(parse_ip(ip).expect("ip"));
        let de = Country::parse("DE").expect("DE");
        assert_eq!(
            owner(&mut attributor, "203.0.113.7"),
            Owner {
                asn: 64500,
                country: de
            }
        );
        // In the AS, outside the country's network.
        assert_eq!(
            owner(&mut attributor, "203.0.113.200"),
            Owner {
                asn: 64500,
                country: Country::UNKNOWN
            }
        );
        assert_eq!(owner(&mut attributor, "2001:db8::1").asn, 64501);
        assert_eq!(owner(&mut attributor, "192.0.2.1"), Owner::default());
        assert_eq!(owners.org(64500).as_deref(), Some("EXAMPLE-NET"));
        assert_eq!(owners.info().len(), 2);
    }

    #[test]
    fn a_bad_file_names_its_option_and_a_reload_keeps_the_databases_in_force() {
        let dir = tempdir();
        let (asn, country) = databases(&dir);
        let garbage = dir.join("garbage.mmdb");
        std::fs::write(&garbage, b"not a database at all").expect("write");
        let refused = Owners::open(None, Some(garbage)).expect_err("refused");
        assert_eq!(refused.option, "--country-db");
        assert!(refused.to_string().contains("garbage.mmdb"), "{refused}");

        let owners = Owners::open(Some(asn.clone()), Some(country))
            .expect("valid")
            .expect("some");
        let mut attributor = owners.attributor(1 << 30);
        let ip = parse_ip("203.0.113.7").expect("ip");
        assert_eq!(attributor.owner(ip).asn, 64500);
        // The file is replaced by a truncated copy: the reload is refused.
        let bytes = std::fs::read(&asn).expect("read");
        std::fs::write(&asn, &bytes[..bytes.len() / 2]).expect("truncate");
        let refused = owners.reload().expect_err("a truncated file");
        assert_eq!(refused.option, "--asn-db");
        attributor.refresh();
        assert_eq!(attributor.owner(ip).asn, 64500, "the old database stays");
        // A good new file is taken up.
        testing::write("asn", &asn, &["203.0.113.0/24=64999:NEW-OWNER"]);
        owners.reload().expect("a valid file");
        attributor.refresh();
        assert_eq!(attributor.owner(ip).asn, 64999);
        assert_eq!(owners.org(64999).as_deref(), Some("NEW-OWNER"));
    }

    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ipstats-owners-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
