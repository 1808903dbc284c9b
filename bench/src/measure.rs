//! What the harness reads off processes and latencies: a process's CPU time and RSS from
//! `/proc`, and latency histograms (hdrhistogram) with their percentiles.

use hdrhistogram::Histogram;

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ; 100 on every Linux ABI we run on).
const TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime of process `pid` and its live descendants that its main thread started
/// (nginx's workers under its master) in seconds, all threads; 0 if it is gone. A child
/// that already exited is not counted.
pub fn cpu_seconds(pid: u32) -> f64 {
    let own = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| cpu_seconds_of_stat(&s))
        .unwrap_or(0.0);
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    own + children
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .map(cpu_seconds)
        .sum::<f64>()
}

/// utime + stime (fields 14 and 15) of one `/proc/PID/stat` line, in seconds. The command
/// (field 2) may hold spaces and parentheses, so fields are counted after its last `)`.
pub fn cpu_seconds_of_stat(stat: &str) -> f64 {
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state), so field N sits at index N - 3.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
    (field(14).unwrap_or(0.0) + field(15).unwrap_or(0.0)) / TICKS_PER_SECOND
}

/// Resident set size of process `pid` in KiB (VmRSS), if it is running.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    rss_kib_of_status(&status)
}

pub fn rss_kib_of_status(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Open file descriptors of process `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// `GET path` from a wao-lb admin API (HTTP/1.0): the status and the body, or None when it
/// does not answer within 30 s.
pub async fn admin_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut text = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        s.read_to_string(&mut text),
    )
    .await
    .ok()?
    .ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// A histogram of nanoseconds, 1 ns to 10 s, 3 significant digits.
pub fn histogram() -> std::io::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).map_err(std::io::Error::other)
}

/// p50, p90, p99 and p99.9 in microseconds of a histogram of nanoseconds.
pub fn percentiles_us(h: &Histogram<u64>) -> [f64; 4] {
    [50.0, 90.0, 99.0, 99.9].map(|q| h.value_at_quantile(q / 100.0) as f64 / 1000.0)
}

/// CPU time a process spends while `f` runs, as a delta of `cpu_seconds`.
pub struct CpuMeter {
    pid: Option<u32>,
    start: f64,
}

impl CpuMeter {
    pub fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            start: pid.map_or(0.0, cpu_seconds),
        }
    }

    /// Seconds of CPU since `start`, or None without a process (direct, kernel paths).
    pub fn seconds(&self) -> Option<f64> {
        self.pid.map(|p| cpu_seconds(p) - self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_math() {
        let mut h = histogram().unwrap();
        for us in 1..=1000u64 {
            h.record(us * 1000).unwrap();
        }
        let [p50, p90, p99, p999] = percentiles_us(&h);
        assert!((p50 - 500.0).abs() <= 1.0, "{p50}");
        assert!((p90 - 900.0).abs() <= 1.0, "{p90}");
        assert!((p99 - 990.0).abs() <= 1.0, "{p99}");
        assert!((p999 - 999.0).abs() <= 2.0, "{p999}");
    }

    #[test]
    fn percentiles_of_a_skewed_histogram() {
        // 990 fast requests and 10 slow ones: p50/p90 fast, p99.9 slow.
        let mut h = histogram().unwrap();
        for _ in 0..990 {
            h.record(100_000).unwrap();
        }
        for _ in 0..10 {
            h.record(5_000_000).unwrap();
        }
        let [p50, p90, p99, p999] = percentiles_us(&h);
        assert!((p50 - 100.0).abs() < 0.5 && (p90 - 100.0).abs() < 0.5);
        assert!((p99 - 100.0).abs() < 0.5, "{p99}");
        assert!((p999 - 5000.0).abs() < 5.0, "{p999}");
    }

    #[test]
    fn stat_fields_survive_a_command_with_spaces_and_parens() {
        let stat = "4242 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 1 0";
        assert!((cpu_seconds_of_stat(stat) - 4.0).abs() < 1e-9);
        assert_eq!(cpu_seconds_of_stat("garbage"), 0.0);
    }

    #[test]
    fn rss_from_status() {
        let status = "Name:\twao-lb\nVmPeak:\t 9000 kB\nVmRSS:\t    5120 kB\nThreads:\t2\n";
        assert_eq!(rss_kib_of_status(status), Some(5120));
        assert_eq!(rss_kib_of_status("Name: x\n"), None);
    }

    #[test]
    fn this_process_is_measurable() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap_or(0) > 0);
        assert!(open_fds(me) >= 3);
        let meter = CpuMeter::start(Some(me));
        let until = std::time::Instant::now() + std::time::Duration::from_millis(60);
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(meter.seconds().unwrap_or(0.0) > 0.0);
        assert_eq!(CpuMeter::start(None).seconds(), None);
    }
}
