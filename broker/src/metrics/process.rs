//! Process and disk figures on `/metrics`, read at each scrape.
//!
//! [`ProcessCollector`] exports the standard Prometheus process metrics
//! (the names every client library uses, so stock dashboards and alerts
//! work): `process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`. CPU time comes from `getrusage`, the
//! descriptor limit from `getrlimit`, the rest from `/proc/self` (Linux;
//! elsewhere those series are left out).
//!
//! [`DiskCollector`] exports the free and total space of the file system
//! holding the data directory (`statvfs`), for the "disk filling" alert.
//!
//! A figure that cannot be read is left out of that scrape, never an
//! error: a scrape must not fail because `/proc` hiccupped.

use std::path::PathBuf;
use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, Gauge, IntGauge, Opts};

/// The process figures.
#[derive(Debug)]
pub struct ProcessCollector {
    descs: Vec<Desc>,
    cpu: Counter,
    rss: IntGauge,
    vsize: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    start_time: Gauge,
    /// Serializes scrapes: the CPU counter moves by differences.
    scrape: Mutex<()>,
}

impl ProcessCollector {
    /// The collector for this process.
    ///
    /// # Errors
    ///
    /// Only on a programming error (a malformed name).
    pub fn new() -> prometheus::Result<Self> {
        let cpu = Counter::with_opts(Opts::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        ))?;
        let rss = IntGauge::new(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        )?;
        let vsize = IntGauge::new(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        )?;
        let open_fds = IntGauge::new("process_open_fds", "Number of open file descriptors.")?;
        let max_fds = IntGauge::new(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        )?;
        let start_time = Gauge::new(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        )?;
        let mut descs = Vec::new();
        for c in [
            &cpu as &dyn Collector,
            &rss,
            &vsize,
            &open_fds,
            &max_fds,
            &start_time,
        ] {
            descs.extend(c.desc().into_iter().cloned());
        }
        if let Some(t) = read::start_time_seconds() {
            start_time.set(t);
        }
        Ok(Self {
            descs,
            cpu,
            rss,
            vsize,
            open_fds,
            max_fds,
            start_time,
            scrape: Mutex::new(()),
        })
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self
            .scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = Vec::new();
        if let Some(total) = read::cpu_seconds() {
            let delta = total - self.cpu.get();
            if delta > 0.0 {
                self.cpu.inc_by(delta);
            }
            out.extend(self.cpu.collect());
        }
        if let Some((vsize, rss)) = read::memory_bytes() {
            self.vsize.set(vsize);
            self.rss.set(rss);
            out.extend(self.vsize.collect());
            out.extend(self.rss.collect());
        }
        if let Some(n) = read::open_fds() {
            self.open_fds.set(n);
            out.extend(self.open_fds.collect());
        }
        if let Some(n) = read::max_fds() {
            self.max_fds.set(n);
            out.extend(self.max_fds.collect());
        }
        if self.start_time.get() > 0.0 {
            out.extend(self.start_time.collect());
        }
        out
    }
}

/// Free and total space of the data directory's file system.
#[derive(Debug)]
pub struct DiskCollector {
    dir: PathBuf,
    descs: Vec<Desc>,
    available: IntGauge,
    capacity: IntGauge,
    scrape: Mutex<()>,
}

impl DiskCollector {
    /// The collector for the file system holding `dir`.
    ///
    /// # Errors
    ///
    /// Only on a programming error (a malformed name).
    pub fn new(dir: PathBuf) -> prometheus::Result<Self> {
        let available = IntGauge::new(
            "strongbox_storage_available_bytes",
            "Bytes available to the broker on the file system of its data directory.",
        )?;
        let capacity = IntGauge::new(
            "strongbox_storage_capacity_bytes",
            "Size in bytes of the file system of the broker's data directory.",
        )?;
        let mut descs = Vec::new();
        descs.extend(available.desc().into_iter().cloned());
        descs.extend(capacity.desc().into_iter().cloned());
        Ok(Self {
            dir,
            descs,
            available,
            capacity,
            scrape: Mutex::new(()),
        })
    }
}

impl Collector for DiskCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let _one = self
            .scrape
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Ok(st) = nix::sys::statvfs::statvfs(&self.dir) else {
            return Vec::new();
        };
        // The block counts and sizes are 32 bits wide on some targets.
        #[allow(clippy::useless_conversion)]
        let (fragment, available, blocks) = (
            u64::from(st.fragment_size()),
            u64::from(st.blocks_available()),
            u64::from(st.blocks()),
        );
        let bytes =
            |blocks: u64| i64::try_from(blocks.saturating_mul(fragment)).unwrap_or(i64::MAX);
        self.available.set(bytes(available));
        self.capacity.set(bytes(blocks));
        let mut out = self.available.collect();
        out.extend(self.capacity.collect());
        out
    }
}

/// The readers, each `None` when its source is unavailable.
mod read {
    use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage};
    use nix::unistd::{SysconfVar, sysconf};

    pub(super) fn cpu_seconds() -> Option<f64> {
        let usage = getrusage(UsageWho::RUSAGE_SELF).ok()?;
        let secs = |tv: nix::sys::time::TimeVal| {
            // Both parts are small and non-negative for CPU time.
            tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6
        };
        Some(secs(usage.user_time()) + secs(usage.system_time()))
    }

    fn page_size() -> Option<i64> {
        sysconf(SysconfVar::PAGE_SIZE).ok().flatten()
    }

    /// (virtual, resident) bytes, from `/proc/self/statm` (in pages).
    pub(super) fn memory_bytes() -> Option<(i64, i64)> {
        let text = std::fs::read_to_string("/proc/self/statm").ok()?;
        let mut fields = text.split_whitespace();
        let size: i64 = fields.next()?.parse().ok()?;
        let resident: i64 = fields.next()?.parse().ok()?;
        let page = page_size()?;
        Some((size.checked_mul(page)?, resident.checked_mul(page)?))
    }

    pub(super) fn open_fds() -> Option<i64> {
        let entries = std::fs::read_dir("/proc/self/fd").ok()?;
        // The directory handle being read is one of the entries.
        let n = entries.count().saturating_sub(1);
        i64::try_from(n).ok()
    }

    pub(super) fn max_fds() -> Option<i64> {
        let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
        Some(i64::try_from(soft).unwrap_or(i64::MAX))
    }

    /// When the process started: its start in clock ticks after boot
    /// (`/proc/self/stat` field 22, counted on the boot-time clock) placed
    /// on the wall clock through `CLOCK_BOOTTIME`. (Reading the boot time
    /// from `/proc/stat` instead would fail under systemd's
    /// `ProcSubset=pid`, which hides everything but process directories.)
    pub(super) fn start_time_seconds() -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) is in parentheses and may hold spaces
        // or parentheses itself: count fields after the last ')'.
        let after = stat.get(stat.rfind(')')?.checked_add(1)?..)?;
        // Fields from 3 (state) on; starttime is field 22.
        let ticks: u64 = after.split_whitespace().nth(22 - 3)?.parse().ok()?;
        let hz = sysconf(SysconfVar::CLK_TCK).ok().flatten()?;
        if hz <= 0 {
            return None;
        }
        let since_boot = ticks as f64 / hz as f64;
        let booted_for = std::time::Duration::from(
            nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?,
        )
        .as_secs_f64();
        let now = strongbox_protocol::clock::now_ms() as f64 / 1000.0;
        Some(now - booted_for + since_boot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_of(c: impl Collector + 'static) -> String {
        let r = prometheus::Registry::new();
        r.register(Box::new(c)).expect("register");
        let mut out = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &r.gather(), &mut out)
            .expect("encode");
        String::from_utf8(out).expect("utf-8")
    }

    fn value(text: &str, name: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from\n{text}"))
            .trim()
            .parse()
            .expect("number")
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn process_figures_are_plausible() {
        // Burn a little CPU so the counter is above zero.
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert_ne!(x, 1);
        let text = text_of(ProcessCollector::new().expect("collector"));
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter"),
            "{text}"
        );
        assert!(value(&text, "process_cpu_seconds_total") > 0.0);
        let rss = value(&text, "process_resident_memory_bytes");
        assert!(rss > 1e6 && rss < 1e11, "{rss}");
        assert!(value(&text, "process_virtual_memory_bytes") >= rss);
        let fds = value(&text, "process_open_fds");
        assert!(
            fds >= 3.0 && fds <= value(&text, "process_max_fds"),
            "{fds}"
        );
        let start = value(&text, "process_start_time_seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        // Started before now, and not long before: this test process is new.
        assert!(
            start <= now + 1.0 && start > now - 600.0,
            "{start} vs {now}"
        );
    }

    #[test]
    fn an_open_file_is_counted() {
        let c = ProcessCollector::new().expect("collector");
        let before = read::open_fds().expect("fds");
        let dir = tempfile::tempdir().expect("tmp");
        let files: Vec<std::fs::File> = (0..5)
            .map(|i| std::fs::File::create(dir.path().join(i.to_string())).expect("file"))
            .collect();
        let after = read::open_fds().expect("fds");
        assert!(after >= before + 5, "{before} -> {after}");
        drop(files);
        drop(c);
    }

    #[test]
    fn disk_space_of_the_data_directory() {
        let dir = tempfile::tempdir().expect("tmp");
        let text = text_of(DiskCollector::new(dir.path().to_path_buf()).expect("collector"));
        let available = value(&text, "strongbox_storage_available_bytes");
        let capacity = value(&text, "strongbox_storage_capacity_bytes");
        assert!(
            capacity > 0.0 && available <= capacity,
            "{available} / {capacity}"
        );
        // A directory that is gone gives no series, not an error.
        let gone = DiskCollector::new(dir.path().join("missing")).expect("collector");
        assert!(gone.collect().is_empty());
    }
}
