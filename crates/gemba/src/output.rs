//! Printing for the commands that write to stdout (`slo`, `stats`, `bench`, `loadtest`, ...).
//! A reader that goes away (`gemba slo rules | head`) ends the command quietly, as it ends other
//! Unix tools, instead of a panic with a backtrace; the server itself never prints to stdout.

use std::io::Write;

/// Write `args` to stdout; exit quietly (status 0) if the reader has gone away.
pub fn write(args: std::fmt::Arguments, newline: bool) {
    let mut out = std::io::stdout().lock();
    let r = out.write_fmt(args).and_then(|()| if newline { out.write_all(b"\n") } else { Ok(()) });
    let r = r.and_then(|()| out.flush());
    if let Err(e) = r {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("gemba: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// `println!` for command output: quiet on a closed pipe.
macro_rules! outln {
    () => { $crate::output::write(format_args!(""), true) };
    ($($t:tt)*) => { $crate::output::write(format_args!($($t)*), true) };
}

/// `print!` for command output: quiet on a closed pipe.
macro_rules! out {
    ($($t:tt)*) => { $crate::output::write(format_args!($($t)*), false) };
}
