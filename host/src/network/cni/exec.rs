//! Running one CNI plugin binary: find it in the plugin directories, run it with the CNI
//! environment and the configuration on stdin, bounded by a timeout, and turn a failure into
//! a `CniError` that says which plugin failed and why.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::result::ErrorJson;
use crate::network::error::CniError;

/// The PATH plugins get when moatd has none (portmap and bridge run iptables).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The most of a failing plugin's output an error message quotes.
const MAX_OUTPUT: usize = 2048;

/// A CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CniCommand {
    /// Add the container to the network.
    Add,
    /// Check the container's networking.
    Check,
    /// Remove the container from the network.
    Del,
}

impl CniCommand {
    /// The `CNI_COMMAND` value.
    pub fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Check => "CHECK",
            CniCommand::Del => "DEL",
        }
    }
}

/// The per-attachment parameters, the same for every plugin of a list and every command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_NETNS`; empty when the namespace is gone (DEL only).
    pub netns: String,
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// `CNI_ARGS`.
    pub args: String,
}

/// Finds and runs plugins.
#[derive(Debug, Clone)]
pub struct PluginRunner {
    bin_dirs: Vec<PathBuf>,
    timeout: Duration,
}

impl PluginRunner {
    /// Plugins are looked up in `bin_dirs`, in order; each call may take `timeout`.
    pub fn new(bin_dirs: Vec<PathBuf>, timeout: Duration) -> Self {
        Self { bin_dirs, timeout }
    }

    /// `CNI_PATH`: the plugin directories, `:`-separated.
    pub fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// The executable for plugin `type` `plugin`.
    pub fn find(&self, plugin: &str, network: &str) -> Result<PathBuf, CniError> {
        for dir in &self.bin_dirs {
            let p = dir.join(plugin);
            if is_executable(&p) {
                return Ok(p);
            }
        }
        Err(CniError::PluginNotFound {
            plugin: plugin.to_owned(),
            network: network.to_owned(),
            dirs: self.cni_path(),
        })
    }

    /// Runs `plugin` with `command` and `stdin`; returns its stdout on success.
    pub async fn exec(
        &self,
        plugin: &str,
        network: &str,
        command: CniCommand,
        att: &Attachment,
        stdin: &[u8],
    ) -> Result<Vec<u8>, CniError> {
        let started = std::time::Instant::now();
        let out = self.exec_once(plugin, network, command, att, stdin).await;
        let op = match command {
            CniCommand::Add => "add",
            CniCommand::Check => "check",
            CniCommand::Del => "del",
        };
        crate::metrics::get().cni_call(op, started.elapsed(), out.is_ok());
        out
    }

    async fn exec_once(
        &self,
        plugin: &str,
        network: &str,
        command: CniCommand,
        att: &Attachment,
        stdin: &[u8],
    ) -> Result<Vec<u8>, CniError> {
        let path = self.find(plugin, network)?;
        let mut cmd = Command::new(&path);
        cmd.env_clear()
            .env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", &att.netns)
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_ARGS", &att.args)
            .env("CNI_PATH", self.cni_path())
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| DEFAULT_PATH.into()),
            )
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // A timed-out plugin is killed when its future is dropped.
            .kill_on_drop(true);
        // ETXTBSY: the binary is being written (a plugin install racing us, or another
        // thread's fork holding a just-written file open); it clears within moments.
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Ok(c) => break c,
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 10 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(source) => {
                    return Err(CniError::Spawn {
                        plugin: plugin.to_owned(),
                        path: path.clone(),
                        source,
                    });
                }
            }
        };
        let mut child_stdin = child.stdin.take();
        let input = stdin.to_vec();
        let writer = async move {
            if let Some(w) = child_stdin.as_mut() {
                // A plugin that exits without reading its input is judged by its exit status.
                let _ = w.write_all(&input).await;
                let _ = w.shutdown().await;
            }
            drop(child_stdin);
        };
        let run = async {
            let ((), out) = tokio::join!(writer, child.wait_with_output());
            out
        };
        let out = match tokio::time::timeout(self.timeout, run).await {
            Ok(Ok(out)) => out,
            Ok(Err(source)) => {
                return Err(CniError::Spawn {
                    plugin: plugin.to_owned(),
                    path,
                    source,
                });
            }
            Err(_) => {
                return Err(CniError::Timeout {
                    plugin: plugin.to_owned(),
                    command: command.as_str(),
                    network: network.to_owned(),
                    timeout: self.timeout,
                });
            }
        };
        if out.status.success() {
            tracing::debug!(
                plugin,
                command = command.as_str(),
                container = %att.container_id,
                stderr = %String::from_utf8_lossy(&out.stderr).trim(),
                "CNI plugin done"
            );
            return Ok(out.stdout);
        }
        if let Some(e) = ErrorJson::parse(&out.stdout) {
            return Err(CniError::Plugin {
                plugin: plugin.to_owned(),
                command: command.as_str(),
                network: network.to_owned(),
                code: e.code,
                msg: e.msg,
                details: e.details,
            });
        }
        let mut output = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !stdout.trim().is_empty() {
            if !output.is_empty() {
                output.push_str(" | ");
            }
            output.push_str(stdout.trim());
        }
        if output.is_empty() {
            output = "no output".into();
        }
        Err(CniError::Crashed {
            plugin: plugin.to_owned(),
            command: command.as_str(),
            network: network.to_owned(),
            status: out.status.to_string(),
            output: tail(&output, MAX_OUTPUT),
        })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The last `max` bytes of `s` (on a char boundary), marked when cut.
fn tail(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    fn att() -> Attachment {
        Attachment {
            container_id: "c1".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            args: "IgnoreUnknown=1;K8S_POD_NAME=p".into(),
        }
    }

    #[tokio::test]
    async fn env_is_cleared_and_cni_variables_and_stdin_are_passed() {
        let d = tempfile::tempdir().expect("tmp");
        let empty = tempfile::tempdir().expect("tmp");
        script(
            d.path(),
            "echoenv",
            r#"printf '{"env":"%s|%s|%s|%s|%s|%s|%s","stdin":' "$CNI_COMMAND" "$CNI_CONTAINERID" "$CNI_NETNS" "$CNI_IFNAME" "$CNI_ARGS" "$CNI_PATH" "${HOME:-nohome}"; cat; printf '}'"#,
        );
        let r = PluginRunner::new(
            vec![empty.path().to_owned(), d.path().to_owned()],
            Duration::from_secs(10),
        );
        let out = r
            .exec("echoenv", "n", CniCommand::Add, &att(), br#"{"a":1}"#)
            .await
            .expect("run");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(
            v["env"],
            format!(
                "ADD|c1|/var/run/netns/x|eth0|IgnoreUnknown=1;K8S_POD_NAME=p|{}:{}|nohome",
                empty.path().display(),
                d.path().display()
            )
        );
        assert_eq!(v["stdin"]["a"], 1);
    }

    #[tokio::test]
    async fn failures_become_typed_errors() {
        let d = tempfile::tempdir().expect("tmp");
        script(
            d.path(),
            "fails",
            r#"echo '{"cniVersion":"1.0.0","code":7,"msg":"bad config","details":"no bridge"}'; exit 1"#,
        );
        script(d.path(), "crashes", "echo 'panic: boom' >&2; exit 2");
        script(d.path(), "hangs", "sleep 30");
        std::fs::write(d.path().join("notexec"), "x").expect("write");
        let r = PluginRunner::new(vec![d.path().to_owned()], Duration::from_millis(500));

        match r.exec("fails", "net", CniCommand::Del, &att(), b"{}").await {
            Err(CniError::Plugin {
                plugin,
                command,
                code,
                msg,
                details,
                ..
            }) => {
                assert_eq!(
                    (
                        plugin.as_str(),
                        command,
                        code,
                        msg.as_str(),
                        details.as_str()
                    ),
                    ("fails", "DEL", 7, "bad config", "no bridge")
                );
            }
            other => panic!("{other:?}"),
        }
        let e = r
            .exec("crashes", "net", CniCommand::Add, &att(), b"{}")
            .await
            .expect_err("crash");
        assert!(matches!(e, CniError::Crashed { .. }), "{e:?}");
        assert!(e.to_string().contains("panic: boom"), "{e}");

        let t0 = std::time::Instant::now();
        let e = r
            .exec("hangs", "net", CniCommand::Add, &att(), b"{}")
            .await
            .expect_err("timeout");
        assert!(matches!(e, CniError::Timeout { .. }), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(10));

        for missing in ["nope", "notexec"] {
            let e = r
                .exec(missing, "net", CniCommand::Add, &att(), b"{}")
                .await
                .expect_err("missing");
            assert!(matches!(e, CniError::PluginNotFound { .. }), "{e:?}");
            assert!(e.to_string().contains(missing), "{e}");
        }
    }

    #[test]
    fn tail_keeps_the_end() {
        assert_eq!(tail("abc", 5), "abc");
        assert_eq!(tail("abcdef", 3), "...def");
        assert_eq!(tail("ééé", 3), "...é");
    }
}
