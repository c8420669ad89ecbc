//! The runtime side of CNI: executing a network configuration list (ADD in order with each
//! plugin's result chained into the next one's `prevResult`; CHECK in order and DEL in reverse
//! order, both with the ADD result as `prevResult`).
//!
//! Written here rather than taken from a crate: the Rust CNI crates are for writing plugins
//! (`cni-plugin`, `rscni`), and the one runtime-side crate (`rust-cni`) is synchronous, has
//! no result cache, no timeouts and no typed plugin errors. What a runtime needs is small: find
//! the binary, set six variables, pipe JSON in and out.

pub mod conf;
pub mod exec;
pub mod result;

use serde_json::Value;

use crate::network::error::CniError;
use conf::{NetworkConfigList, RuntimeConfig};
use exec::{Attachment, CniCommand, PluginRunner};

/// Runs network configuration lists.
#[derive(Debug, Clone)]
pub struct Cni {
    runner: PluginRunner,
}

impl Cni {
    /// A runner over `runner`'s plugin directories.
    pub fn new(runner: PluginRunner) -> Self {
        Self { runner }
    }

    /// ADD: every plugin in order, each getting the previous plugin's result as `prevResult`.
    /// Returns the last plugin's result (raw, for caching and later `prevResult`s).
    pub async fn add(
        &self,
        list: &NetworkConfigList,
        att: &Attachment,
        runtime: &RuntimeConfig,
    ) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for i in 0..list.plugins.len() {
            let plugin = list.plugin_type(i);
            let stdin = list.plugin_config(i, prev.as_ref(), runtime);
            let out = self
                .runner
                .exec(
                    plugin,
                    &list.name,
                    CniCommand::Add,
                    att,
                    stdin.to_string().as_bytes(),
                )
                .await?;
            let bad = |reason: String| CniError::BadResult {
                plugin: plugin.to_owned(),
                command: CniCommand::Add.as_str(),
                network: list.name.clone(),
                reason,
            };
            if out.iter().all(u8::is_ascii_whitespace) {
                return Err(bad("no result on stdout".into()));
            }
            let v: Value = serde_json::from_slice(&out).map_err(|e| bad(e.to_string()))?;
            if !v.is_object() {
                return Err(bad("not a JSON object".into()));
            }
            prev = Some(v);
        }
        prev.ok_or_else(|| CniError::InvalidConfig {
            file: list.name.clone(),
            reason: "no plugins".into(),
        })
    }

    /// CHECK: every plugin in order with the ADD result as `prevResult`. Skipped (Ok) for
    /// lists with `disableCheck` and for spec versions before 0.4.0, which have no CHECK.
    pub async fn check(
        &self,
        list: &NetworkConfigList,
        att: &Attachment,
        runtime: &RuntimeConfig,
        result: &Value,
    ) -> Result<(), CniError> {
        if list.disable_check || !list.version_at_least("0.4.0") {
            return Ok(());
        }
        for i in 0..list.plugins.len() {
            let stdin = list.plugin_config(i, Some(result), runtime);
            self.runner
                .exec(
                    list.plugin_type(i),
                    &list.name,
                    CniCommand::Check,
                    att,
                    stdin.to_string().as_bytes(),
                )
                .await?;
        }
        Ok(())
    }

    /// DEL: every plugin in reverse order, with the ADD result as `prevResult` when there is
    /// one and the spec version has it (0.4.0+). Stops at the first failure, as the spec asks,
    /// except that a plugin whose binary is missing is skipped with a warning: it cannot run
    /// now or on any retry, and failing would block the sandbox's removal forever (after a
    /// failed ADD it never ran at all).
    pub async fn del(
        &self,
        list: &NetworkConfigList,
        att: &Attachment,
        runtime: &RuntimeConfig,
        result: Option<&Value>,
    ) -> Result<(), CniError> {
        let prev = result.filter(|_| list.version_at_least("0.4.0"));
        for i in (0..list.plugins.len()).rev() {
            let stdin = list.plugin_config(i, prev, runtime);
            match self
                .runner
                .exec(
                    list.plugin_type(i),
                    &list.name,
                    CniCommand::Del,
                    att,
                    stdin.to_string().as_bytes(),
                )
                .await
            {
                Err(e @ CniError::PluginNotFound { .. }) => {
                    tracing::warn!(container = %att.container_id, error = %e, "CNI DEL skipped a missing plugin");
                }
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::Duration;

    /// A fake plugin that appends "<name> <command> <stdin>" to a log and, on ADD, echoes its
    /// prevResult with its own name appended to `interfaces` (or starts a result).
    fn fake(dir: &Path, name: &str, log: &Path) {
        let body = format!(
            r#"#!/bin/sh
in=$(cat)
printf '%s %s %s\n' "{name}" "$CNI_COMMAND" "$in" >> {log}
if [ "$CNI_COMMAND" = ADD ]; then
  printf '{{"cniVersion":"1.0.0","interfaces":[{{"name":"{name}"}}],"ips":[{{"address":"10.0.0.2/24"}}]}}'
fi
"#,
            log = log.display()
        );
        let p = dir.join(name);
        std::fs::write(&p, body).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn att() -> Attachment {
        Attachment {
            container_id: "c".into(),
            netns: "/n".into(),
            ifname: "eth0".into(),
            args: String::new(),
        }
    }

    fn calls(log: &Path) -> Vec<(String, String, Value)> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let mut it = l.splitn(3, ' ');
                let n = it.next().unwrap_or_default().to_owned();
                let c = it.next().unwrap_or_default().to_owned();
                let v = serde_json::from_str(it.next().unwrap_or("null")).expect("stdin json");
                (n, c, v)
            })
            .collect()
    }

    #[tokio::test]
    async fn add_chains_prev_result_check_and_del_get_the_final_result_del_reversed() {
        let d = tempfile::tempdir().expect("tmp");
        let log = d.path().join("log");
        fake(d.path(), "first", &log);
        fake(d.path(), "second", &log);
        let list = NetworkConfigList::parse(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"first"},{"type":"second"}]}"#,
            "t",
        )
        .expect("list");
        let cni = Cni::new(PluginRunner::new(
            vec![d.path().to_owned()],
            Duration::from_secs(10),
        ));
        let rc = RuntimeConfig::default();
        let res = cni.add(&list, &att(), &rc).await.expect("add");
        assert_eq!(res["interfaces"][0]["name"], "second");
        cni.check(&list, &att(), &rc, &res).await.expect("check");
        cni.del(&list, &att(), &rc, Some(&res)).await.expect("del");

        let c = calls(&log);
        let order: Vec<_> = c.iter().map(|(n, c, _)| format!("{n} {c}")).collect();
        assert_eq!(
            order,
            [
                "first ADD",
                "second ADD",
                "first CHECK",
                "second CHECK",
                "second DEL",
                "first DEL"
            ]
        );
        assert!(c[0].2.get("prevResult").is_none());
        assert_eq!(c[1].2["prevResult"]["interfaces"][0]["name"], "first");
        for (_, cmd, stdin) in &c[2..] {
            assert_eq!(stdin["prevResult"], res, "{cmd}");
            assert_eq!(stdin["name"], "n");
        }

        // Without an ADD result (failed ADD), DEL still runs every plugin, without prevResult.
        std::fs::remove_file(&log).expect("rm");
        cni.del(&list, &att(), &rc, None).await.expect("del");
        let c = calls(&log);
        assert_eq!(c.len(), 2);
        assert!(c.iter().all(|(_, _, s)| s.get("prevResult").is_none()));
    }

    #[tokio::test]
    async fn old_versions_and_disable_check_skip_check_and_del_prev_result() {
        let d = tempfile::tempdir().expect("tmp");
        let log = d.path().join("log");
        fake(d.path(), "only", &log);
        let cni = Cni::new(PluginRunner::new(
            vec![d.path().to_owned()],
            Duration::from_secs(10),
        ));
        let rc = RuntimeConfig::default();
        let res = serde_json::json!({"cniVersion": "0.3.1"});
        let old =
            NetworkConfigList::parse(br#"{"cniVersion":"0.3.1","name":"n","type":"only"}"#, "t")
                .expect("list");
        cni.check(&old, &att(), &rc, &res).await.expect("check");
        cni.del(&old, &att(), &rc, Some(&res)).await.expect("del");
        let disabled = NetworkConfigList::parse(
            br#"{"cniVersion":"1.0.0","name":"n","disableCheck":true,"plugins":[{"type":"only"}]}"#,
            "t",
        )
        .expect("list");
        cni.check(&disabled, &att(), &rc, &res)
            .await
            .expect("check");
        let c = calls(&log);
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[0].1, "DEL");
        assert!(c[0].2.get("prevResult").is_none());
    }

    #[tokio::test]
    async fn a_failing_add_stops_the_chain() {
        let d = tempfile::tempdir().expect("tmp");
        let log = d.path().join("log");
        fake(d.path(), "first", &log);
        fake(d.path(), "third", &log);
        let list = NetworkConfigList::parse(
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"first"},{"type":"missing"},{"type":"third"}]}"#,
            "t",
        )
        .expect("list");
        let cni = Cni::new(PluginRunner::new(
            vec![d.path().to_owned()],
            Duration::from_secs(10),
        ));
        let e = cni
            .add(&list, &att(), &RuntimeConfig::default())
            .await
            .expect_err("missing plugin");
        assert!(e.to_string().contains("\"missing\""), "{e}");
        assert_eq!(calls(&log).len(), 1);
        // DEL runs the others, skipping the missing one.
        cni.del(&list, &att(), &RuntimeConfig::default(), None)
            .await
            .expect("del");
        let c = calls(&log);
        let order: Vec<_> = c.iter().map(|(n, c, _)| format!("{n} {c}")).collect();
        assert_eq!(order, ["first ADD", "third DEL", "first DEL"]);
    }
}
