//! `juggler --upgrade --detach`: the upgrade as a service manager's reload command runs it. The
//! reload command must end, and systemd refuses to make it the main process ("New main PID … is
//! the control process, refusing"), so the new Juggler cannot be that process: this one starts
//! it as a process of its own (the same binary and flags, less `--detach`), waits until it has
//! taken over, and exits 0, or with the new process's own failure (whose error it has already
//! printed on the shared stderr). The new process tells the manager `MAINPID=` itself.
//!
//! "Taken over" is the moment the new process binds the control socket anew, which it does right
//! after telling the running one it accepts (and, under a manager, after `MAINPID=` and
//! `READY=1`): the file at the control path is then another socket than the one this started
//! with. Nothing else is needed to tell the two processes apart.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::Duration;

/// How often the new process and the control socket are looked at.
const POLL_EVERY: Duration = Duration::from_millis(20);

pub fn run(control_socket: &Path) -> ExitCode {
    match launch(control_socket) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("juggler --detach: {error}");
            ExitCode::FAILURE
        }
    }
}

fn launch(control_socket: &Path) -> std::io::Result<ExitCode> {
    let identity = |path: &Path| {
        std::fs::metadata(path)
            .ok()
            .map(|file| (file.dev(), file.ino()))
    };
    let before = identity(control_socket);
    let arguments = std::env::args_os()
        .skip(1)
        .filter(|argument| argument != "--detach");
    // stdin, stdout, stderr and the environment ($NOTIFY_SOCKET among it) are inherited.
    let mut child = Command::new(std::env::current_exe()?)
        .args(arguments)
        .spawn()?;
    loop {
        if let Some(status) = child.try_wait()? {
            eprintln!("juggler --detach: the new process exited ({status}) before it took over");
            let code = status.code().and_then(|code| u8::try_from(code).ok());
            return Ok(ExitCode::from(code.filter(|code| *code != 0).unwrap_or(1)));
        }
        let now = identity(control_socket);
        if now.is_some() && now != before {
            eprintln!(
                "juggler --detach: the new process (pid {}) has taken over",
                child.id()
            );
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(POLL_EVERY);
    }
}
