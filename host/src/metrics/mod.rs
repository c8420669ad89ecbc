//! moatd's own Prometheus metrics (`/metrics`, served by `server`): what moatd did (boots
//! and their phases, agent calls, image pulls, CNI calls, streaming sessions) is recorded
//! where it happens, into one process-wide registry; what runs (pods and containers by
//! state, each pod's host cost) is read at each scrape (`Census`).
//!
//! The names follow Prometheus's conventions (`moat_` prefix, base units, `_total` for
//! counters); docs/configuration.md lists them.

pub mod server;

use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A phase of RunPodSandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootPhase {
    /// The pod network: CNI ADD and the tap.
    Network,
    /// The VMM and its device back-ends started.
    VmmStart,
    /// From the VMM's start to the agent's first answer: the kernel's boot and init.
    KernelBoot,
    /// The sandbox set up in the guest (shares, hostname, DNS, its network).
    Setup,
    /// The whole call.
    Total,
}

impl BootPhase {
    /// The `phase` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Network => "network",
            Self::VmmStart => "vmm_start",
            Self::KernelBoot => "kernel_boot",
            Self::Setup => "setup",
            Self::Total => "total",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodErrorLabels {
    method: &'static str,
    error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpResultLabels {
    op: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// What runs, read at a scrape.
#[derive(Debug, Clone, Default)]
pub struct Census {
    /// Pod sandboxes by state (`ready`, `notready`...).
    pub pods_by_state: Vec<(&'static str, u64)>,
    /// Containers by state (`created`, `running`, `exited`...).
    pub containers_by_state: Vec<(&'static str, u64)>,
    /// Each running pod's host processes.
    pub pods: Vec<PodCost>,
}

/// One running pod's host cost.
#[derive(Debug, Clone)]
pub struct PodCost {
    /// The sandbox id.
    pub id: String,
    /// Its Kubernetes namespace.
    pub namespace: String,
    /// Its Kubernetes name.
    pub name: String,
    /// Its VMM and back-ends.
    pub usage: crate::hypervisor::usage::HostUsage,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PodLabels {
    pod_sandbox_id: String,
    namespace: String,
    pod: String,
}

/// The census of the last scrape, encoded with it.
#[derive(Debug, Default)]
struct CensusCollector {
    last: Mutex<Census>,
}

impl Collector for CensusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let c = self.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut gauge_by_state =
            |name: &str, help: &str, rows: &[(&'static str, u64)]| -> std::fmt::Result {
                let g = ConstGauge::new(0i64);
                let mut family = encoder.encode_descriptor(name, help, None, g.metric_type())?;
                for &(state, n) in rows {
                    let labels = StateLabels { state };
                    ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
                }
                Ok(())
            };
        gauge_by_state(
            "moat_pod_sandboxes",
            "Pod sandboxes by state.",
            &c.pods_by_state,
        )?;
        gauge_by_state(
            "moat_containers",
            "Containers by state.",
            &c.containers_by_state,
        )?;
        let labels = |p: &PodCost| PodLabels {
            pod_sandbox_id: p.id.clone(),
            namespace: p.namespace.clone(),
            pod: p.name.clone(),
        };
        let cpu = ConstCounter::new(0.0f64);
        let mut family = encoder.encode_descriptor(
            "moat_pod_host_cpu_seconds",
            "CPU time of each running pod's host processes (VMM and device back-ends).",
            None,
            cpu.metric_type(),
        )?;
        for p in &c.pods {
            let l = labels(p);
            ConstCounter::new(p.usage.cpu_nanos as f64 / 1e9).encode(family.encode_family(&l)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "moat_pod_host_memory_bytes",
            "Resident memory (PSS) of each running pod's host processes, guest RAM included.",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for p in &c.pods {
            let l = labels(p);
            ConstGauge::new(p.usage.memory_bytes as i64).encode(family.encode_family(&l)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "moat_pod_host_processes",
            "Host processes of each running pod.",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for p in &c.pods {
            let l = labels(p);
            ConstGauge::new(p.usage.processes as i64).encode(family.encode_family(&l)?)?;
        }
        Ok(())
    }
}

/// Every metric moatd records.
pub struct Metrics {
    registry: Registry,
    census: std::sync::Arc<CensusCollector>,
    boot: HistogramFamily<PhaseLabels>,
    agent_calls: HistogramFamily<MethodLabels>,
    agent_errors: Family<MethodErrorLabels, Counter>,
    pull_bytes: Counter,
    pulls: HistogramFamily<ResultLabels>,
    cni: HistogramFamily<OpResultLabels>,
    sessions_open: Family<KindLabels, Gauge>,
    sessions: Family<KindLabels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn boot_histogram() -> Histogram {
    // 10 ms to about 80 s.
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

fn call_histogram() -> Histogram {
    // 0.5 ms to about 65 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

fn pull_histogram() -> Histogram {
    // 50 ms to about 14 min.
    Histogram::new(exponential_buckets(0.05, 2.0, 15))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let census = std::sync::Arc::new(CensusCollector::default());
        let m = Self {
            boot: Family::new_with_constructor(boot_histogram as fn() -> Histogram),
            agent_calls: Family::new_with_constructor(call_histogram as fn() -> Histogram),
            agent_errors: Family::default(),
            pull_bytes: Counter::default(),
            pulls: Family::new_with_constructor(pull_histogram as fn() -> Histogram),
            cni: Family::new_with_constructor(call_histogram as fn() -> Histogram),
            sessions_open: Family::default(),
            sessions: Family::default(),
            census: census.clone(),
            registry: Registry::default(),
        };
        registry.register(
            "moat_run_pod_sandbox_duration_seconds",
            "RunPodSandbox latency of the pods that started, by phase: network, vmm_start, kernel_boot (VMM start to the agent's answer), setup, and total",
            m.boot.clone(),
        );
        registry.register(
            "moat_agent_request_duration_seconds",
            "Latency of moatd's calls into guest agents, by method",
            m.agent_calls.clone(),
        );
        registry.register(
            "moat_agent_request_errors",
            "Failed calls into guest agents, by method and error (no_answer, unreachable, bad_request, unknown, wrong_state, failed)",
            m.agent_errors.clone(),
        );
        registry.register(
            "moat_image_pull_bytes",
            "Bytes of layers and configs downloaded by image pulls",
            m.pull_bytes.clone(),
        );
        registry.register(
            "moat_image_pull_duration_seconds",
            "PullImage latency, by result (ok, error)",
            m.pulls.clone(),
        );
        registry.register(
            "moat_cni_duration_seconds",
            "Latency of CNI plugin calls, by operation (add, del, check) and result",
            m.cni.clone(),
        );
        registry.register(
            "moat_streaming_sessions_open",
            "Streaming sessions open now, by kind (exec, attach, portforward)",
            m.sessions_open.clone(),
        );
        registry.register(
            "moat_streaming_sessions",
            "Streaming sessions started, by kind",
            m.sessions.clone(),
        );
        registry.register_collector(Box::new(census));
        Self { registry, ..m }
    }

    /// Records a RunPodSandbox phase.
    pub fn boot_phase(&self, phase: BootPhase, took: Duration) {
        self.boot
            .get_or_create(&PhaseLabels {
                phase: phase.label(),
            })
            .observe(took.as_secs_f64());
    }

    /// Records a call into an agent; `error` names its failure.
    pub fn agent_call(&self, method: &'static str, took: Duration, error: Option<&'static str>) {
        self.agent_calls
            .get_or_create(&MethodLabels { method })
            .observe(took.as_secs_f64());
        if let Some(error) = error {
            self.agent_errors
                .get_or_create(&MethodErrorLabels { method, error })
                .inc();
        }
    }

    /// Records downloaded image bytes (as they arrive, so a long pull shows progress).
    pub fn pulled_bytes(&self, bytes: u64) {
        self.pull_bytes.inc_by(bytes);
    }

    /// Records a finished PullImage.
    pub fn image_pull(&self, took: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.pulls
            .get_or_create(&ResultLabels { result })
            .observe(took.as_secs_f64());
    }

    /// Records a CNI call.
    pub fn cni_call(&self, op: &'static str, took: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.cni
            .get_or_create(&OpResultLabels { op, result })
            .observe(took.as_secs_f64());
    }

    /// Counts a streaming session open until the guard drops.
    pub fn streaming_session(&'static self, kind: &'static str) -> SessionGuard {
        let labels = KindLabels { kind };
        self.sessions.get_or_create(&labels).inc();
        self.sessions_open.get_or_create(&labels).inc();
        SessionGuard {
            metrics: self,
            kind,
        }
    }

    /// The registry in the Prometheus text format (0.0.4), with `census` as what runs.
    pub fn encode(&self, census: Census) -> String {
        *self.census.last.lock().unwrap_or_else(|p| p.into_inner()) = census;
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// An open streaming session (see `Metrics::streaming_session`).
#[derive(Debug)]
pub struct SessionGuard {
    metrics: &'static Metrics,
    kind: &'static str,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.metrics
            .sessions_open
            .get_or_create(&KindLabels { kind: self.kind })
            .dec();
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// Times a future and hands its duration and output to `record`.
pub async fn timed<T>(
    f: impl std::future::Future<Output = T>,
    record: impl FnOnce(Duration, &T),
) -> T {
    let start = std::time::Instant::now();
    let out = f.await;
    record(start.elapsed(), &out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_recorded_is_encoded() {
        let m = Metrics::new();
        m.boot_phase(BootPhase::KernelBoot, Duration::from_millis(1500));
        m.agent_call("exec_sync", Duration::from_millis(3), Some("no_answer"));
        m.pulled_bytes(1000);
        m.cni_call("add", Duration::from_millis(40), true);
        let s = Box::leak(Box::new(Metrics::new()));
        let open = s.streaming_session("exec");
        let census = Census {
            pods_by_state: vec![("ready", 2)],
            containers_by_state: vec![("running", 3)],
            pods: vec![PodCost {
                id: "abc".into(),
                namespace: "default".into(),
                name: "web".into(),
                usage: crate::hypervisor::usage::HostUsage {
                    cpu_nanos: 2_500_000_000,
                    memory_bytes: 100 << 20,
                    processes: 4,
                },
            }],
        };
        let text = m.encode(census);
        for line in [
            "moat_run_pod_sandbox_duration_seconds_count{phase=\"kernel_boot\"} 1",
            "moat_agent_request_errors_total{method=\"exec_sync\",error=\"no_answer\"} 1",
            "moat_image_pull_bytes_total 1000",
            "moat_cni_duration_seconds_count{op=\"add\",result=\"ok\"} 1",
            "moat_pod_sandboxes{state=\"ready\"} 2",
            "moat_containers{state=\"running\"} 3",
            "moat_pod_host_cpu_seconds_total{pod_sandbox_id=\"abc\",namespace=\"default\",pod=\"web\"} 2.5",
            "moat_pod_host_memory_bytes{pod_sandbox_id=\"abc\",namespace=\"default\",pod=\"web\"} 104857600",
        ] {
            assert!(text.contains(line), "{line} not in:\n{text}");
        }
        let text = s.encode(Census::default());
        assert!(
            text.contains("moat_streaming_sessions_open{kind=\"exec\"} 1"),
            "{text}"
        );
        drop(open);
        let text = s.encode(Census::default());
        assert!(
            text.contains("moat_streaming_sessions_open{kind=\"exec\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("moat_streaming_sessions_total{kind=\"exec\"} 1"),
            "{text}"
        );
    }
}
