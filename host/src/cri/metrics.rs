//! ListMetricDescriptors and ListPodSandboxMetrics: pod and container figures under the
//! cAdvisor names kubelet serves on /metrics/cadvisor when it takes stats from the CRI
//! (`PodAndContainerStatsFromCRI`), with cAdvisor's labels. kubelet turns each descriptor
//! into a Prometheus family and each metric into a sample with these label values.
//!
//! Series with `container=""` are the pod's (as cAdvisor's pod cgroup): CPU and memory of
//! its VM on the host and its network interface; series with a container name are that
//! container's, read from its cgroup in the guest. The CRI carries whole numbers only, so
//! seconds are whole seconds.

use k8s_cri::v1 as cri;

use crate::pods::PodStats;

/// The labels of every series.
const LABELS: [&str; 6] = ["container", "id", "image", "name", "namespace", "pod"];

/// (name, help, type, has an `interface` label)
const METRICS: [(&str, &str, cri::MetricType, bool); 15] = [
    (
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        cri::MetricType::Counter,
        false,
    ),
    (
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        cri::MetricType::Gauge,
        false,
    ),
    (
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        cri::MetricType::Gauge,
        false,
    ),
    (
        "container_processes",
        "Number of processes running inside the container.",
        cri::MetricType::Gauge,
        false,
    ),
    (
        "container_start_time_seconds",
        "Start time of the container since unix epoch in seconds.",
        cri::MetricType::Gauge,
        false,
    ),
    (
        "container_last_seen",
        "Last time a container was seen by the exporter.",
        cri::MetricType::Gauge,
        false,
    ),
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        cri::MetricType::Counter,
        true,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        cri::MetricType::Counter,
        true,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        cri::MetricType::Counter,
        true,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        cri::MetricType::Counter,
        true,
    ),
    (
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        cri::MetricType::Counter,
        true,
    ),
    (
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        cri::MetricType::Counter,
        true,
    ),
    (
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        cri::MetricType::Counter,
        true,
    ),
    (
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        cri::MetricType::Counter,
        true,
    ),
    (
        "container_spec_memory_limit_bytes",
        "Memory limit for the container.",
        cri::MetricType::Gauge,
        false,
    ),
];

/// ListMetricDescriptors.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    METRICS
        .iter()
        .map(|&(name, help, _, interface)| cri::MetricDescriptor {
            name: name.into(),
            help: help.into(),
            label_keys: LABELS
                .iter()
                .chain(interface.then_some(&"interface"))
                .map(|k| (*k).to_owned())
                .collect(),
        })
        .collect()
}

/// One pod's series for ListPodSandboxMetrics.
pub fn pod_metrics(s: &PodStats) -> cri::PodSandboxMetrics {
    let r = &s.sandbox;
    let (namespace, pod) = (&r.metadata.namespace, &r.metadata.name);
    let series = |container: &str, id: &str, image: &str| Series {
        labels: vec![
            container.to_owned(),
            id.to_owned(),
            image.to_owned(),
            // cAdvisor's `name` is the runtime's name of the container.
            if container.is_empty() {
                String::new()
            } else {
                format!("{container}_{pod}_{namespace}")
            },
            namespace.clone(),
            pod.clone(),
        ],
        at: s.at,
        out: Vec::new(),
    };
    let mut pod_series = series("", &r.id, "");
    if let Some(h) = &s.host {
        pod_series.add(
            "container_cpu_usage_seconds_total",
            h.cpu_nanos / 1_000_000_000,
        );
        pod_series.add("container_memory_usage_bytes", h.memory_bytes);
        pod_series.add("container_memory_working_set_bytes", h.memory_bytes);
    }
    pod_series.add(
        "container_processes",
        s.containers
            .iter()
            .filter_map(|(_, u)| u.as_ref())
            .map(|u| u.pids)
            .sum(),
    );
    pod_series.add(
        "container_start_time_seconds",
        (r.created_at.max(0) / 1_000_000_000) as u64,
    );
    pod_series.add("container_last_seen", (s.at.max(0) / 1_000_000_000) as u64);
    if let Some(n) = &s.network {
        for (name, value) in [
            ("container_network_receive_bytes_total", n.rx_bytes),
            ("container_network_transmit_bytes_total", n.tx_bytes),
            ("container_network_receive_errors_total", n.rx_errors),
            ("container_network_transmit_errors_total", n.tx_errors),
            ("container_network_receive_packets_total", n.rx_packets),
            ("container_network_transmit_packets_total", n.tx_packets),
            (
                "container_network_receive_packets_dropped_total",
                n.rx_dropped,
            ),
            (
                "container_network_transmit_packets_dropped_total",
                n.tx_dropped,
            ),
        ] {
            pod_series.add_on(name, value, &n.name);
        }
    }
    pod_series.add(
        "container_spec_memory_limit_bytes",
        r.memory_mib.saturating_mul(1 << 20),
    );
    let container_metrics = s
        .containers
        .iter()
        .map(|(c, u)| {
            let mut cs = series(&c.name, &c.id, &c.image);
            if let Some(u) = u {
                cs.at = u.timestamp;
                cs.add(
                    "container_cpu_usage_seconds_total",
                    u.cpu_nanos / 1_000_000_000,
                );
                cs.add("container_memory_usage_bytes", u.memory_bytes);
                cs.add("container_memory_working_set_bytes", u.working_set_bytes);
                cs.add("container_processes", u.pids);
            }
            cs.add(
                "container_start_time_seconds",
                (c.started_at.max(0) / 1_000_000_000) as u64,
            );
            cs.add("container_last_seen", (cs.at.max(0) / 1_000_000_000) as u64);
            cri::ContainerMetrics {
                container_id: c.id.clone(),
                metrics: cs.out,
            }
        })
        .collect();
    cri::PodSandboxMetrics {
        pod_sandbox_id: r.id.clone(),
        metrics: pod_series.out,
        container_metrics,
    }
}

/// The series of one pod or container, gathered.
struct Series {
    labels: Vec<String>,
    at: i64,
    out: Vec<cri::Metric>,
}

impl Series {
    fn add(&mut self, name: &str, value: u64) {
        let labels = self.labels.clone();
        self.push(name, value, labels);
    }

    fn add_on(&mut self, name: &str, value: u64, interface: &str) {
        let mut labels = self.labels.clone();
        labels.push(interface.to_owned());
        self.push(name, value, labels);
    }

    fn push(&mut self, name: &str, value: u64, label_values: Vec<String>) {
        let Some(&(_, _, kind, _)) = METRICS.iter().find(|m| m.0 == name) else {
            return;
        };
        self.out.push(cri::Metric {
            name: name.to_owned(),
            timestamp: self.at,
            metric_type: kind as i32,
            label_values,
            value: Some(cri::UInt64Value { value }),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_series_matches_its_descriptor() {
        let descriptors = descriptors();
        let names: Vec<&str> = descriptors.iter().map(|d| d.name.as_str()).collect();
        assert!(names.contains(&"container_cpu_usage_seconds_total"));
        assert!(names.contains(&"container_memory_working_set_bytes"));
        let mut s = Series {
            labels: vec![
                "c".into(),
                "id".into(),
                "img".into(),
                "n".into(),
                "ns".into(),
                "p".into(),
            ],
            at: 7,
            out: Vec::new(),
        };
        for d in &descriptors {
            if d.label_keys.len() == LABELS.len() {
                s.add(&d.name, 1);
            } else {
                s.add_on(&d.name, 1, "eth0");
            }
        }
        assert_eq!(
            s.out.len(),
            descriptors.len(),
            "every descriptor has a series"
        );
        for m in &s.out {
            let d = descriptors
                .iter()
                .find(|d| d.name == m.name)
                .expect("described");
            assert_eq!(m.label_values.len(), d.label_keys.len(), "{}", m.name);
        }
        s.add("not_described", 1);
        assert_eq!(
            s.out.len(),
            descriptors.len(),
            "undescribed names are not sent"
        );
    }
}
