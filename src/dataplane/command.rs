//! Running the kernel's tools (`nft`, `ip`): a command with its arguments and input, and
//! an error that names the command and what it printed.

/// What went wrong talking to the kernel's tools, with the command and its words.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("`{command}` could not run: {source} (is it installed?)")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Failed { command: String, stderr: String },
}

/// Runs `program args…` with `stdin`; an error names the command and what it printed.
pub async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<(), CommandError> {
    capture(program, args, stdin).await.map(|_| ())
}

/// Runs `program args…` and returns what it printed on stdout.
pub async fn output(program: &str, args: &[&str]) -> Result<String, CommandError> {
    capture(program, args, None).await
}

async fn capture(
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, CommandError> {
    use tokio::io::AsyncWriteExt;
    let command = format!("{program} {}", args.join(" "));
    let spawn_error = |source| CommandError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes()).await;
    }
    let out = child.wait_with_output().await.map_err(spawn_error)?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CommandError::Failed {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}
