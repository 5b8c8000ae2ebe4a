//! `gemba profile`: fetch a CPU profile, a flame graph or a heap view from a running gemba's
//! admin listener and write it to a file.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    Cpu,
    Heap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// An SVG flame graph (CPU only).
    Svg,
    /// pprof protobuf, gzip-compressed (`go tool pprof`, Pyroscope).
    Pprof,
    /// A readable table (heap only).
    Text,
}

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// The admin listener of the gemba to profile (its --admin address), e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub admin: String,
    /// Length of the window, 1 to 60 seconds.
    #[arg(long, default_value_t = super::DEFAULT_SECONDS)]
    pub seconds: u64,
    /// CPU sampling frequency, 1 to 1000 Hz.
    #[arg(long, default_value_t = super::DEFAULT_HZ)]
    pub hz: u32,
    /// What to profile.
    #[arg(long, value_enum, default_value = "cpu")]
    pub kind: Kind,
    /// Output format; from the extension of --out when absent (.svg, .pb.gz/.pb/.pprof, .txt).
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Where to write it.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// The server's --admin-token, when it has one.
    #[arg(long, env = "GEMBA_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// The format named by a file's extension.
fn format_of(out: &std::path::Path) -> Option<Format> {
    let name = out.file_name()?.to_str()?.to_ascii_lowercase();
    if name.ends_with(".svg") {
        Some(Format::Svg)
    } else if [".pb.gz", ".pb", ".pprof", ".prof", ".gz"].iter().any(|e| name.ends_with(e)) {
        Some(Format::Pprof)
    } else if name.ends_with(".txt") {
        Some(Format::Text)
    } else {
        None
    }
}

/// The admin path for a kind and format, or why the pair makes no sense.
fn path_for(kind: Kind, format: Format, seconds: u64, hz: u32) -> Result<String> {
    Ok(match (kind, format) {
        (Kind::Cpu, Format::Svg) => format!("/debug/pprof/flamegraph?seconds={seconds}&hz={hz}"),
        (Kind::Cpu, Format::Pprof) => format!("/debug/pprof/profile?seconds={seconds}&hz={hz}"),
        (Kind::Heap, Format::Pprof) => format!("/debug/pprof/heap?seconds={seconds}"),
        (Kind::Heap, Format::Text) => format!("/debug/pprof/heap?seconds={seconds}&format=text"),
        (Kind::Cpu, Format::Text) => bail!("a CPU profile comes as svg or pprof, not text; use --format svg|pprof"),
        (Kind::Heap, Format::Svg) => bail!("the heap view comes as pprof or text, not svg; use --format pprof|text"),
    })
}

pub async fn run(args: ProfileArgs) -> Result<()> {
    if !(1..=super::MAX_SECONDS).contains(&args.seconds) {
        bail!("--seconds must be from 1 to {} (got {})", super::MAX_SECONDS, args.seconds);
    }
    let format = match args.format.or_else(|| format_of(&args.out)) {
        Some(f) => f,
        None => bail!(
            "cannot tell the format from {}: name it .svg, .pb.gz or .txt, or pass --format svg|pprof|text",
            args.out.display()
        ),
    };
    let path = path_for(args.kind, format, args.seconds, args.hz)?;
    let base = if args.admin.starts_with("http://") || args.admin.starts_with("https://") {
        args.admin.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", args.admin)
    };
    let url = format!("{base}{path}");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(args.seconds + 60))
        .build()
        .context("cannot build the HTTP client")?;
    let mut req = client.get(&url);
    if let Some(t) = &args.token {
        req = req.bearer_auth(t);
    }
    eprintln!("gemba: profiling {} for {} s ({url})", args.admin, args.seconds);
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            bail!("nothing answers at {base}: is gemba running with --admin {}? ({e})", args.admin)
        }
        Err(e) => bail!("the request to {url} failed: {e}"),
    };
    let status = resp.status();
    let body = resp.bytes().await.with_context(|| format!("reading the answer of {url}"))?;
    match status.as_u16() {
        200 => {}
        401 => bail!(
            "the admin listener refused the {}: pass the server's --admin-token with --token or GEMBA_ADMIN_TOKEN",
            if args.token.is_some() { "token given" } else { "request without a token" }
        ),
        404 => bail!("{base} has no {path}: is that a gemba admin listener of a version with profiles?"),
        _ => bail!("{url} answered {status}: {}", String::from_utf8_lossy(&body).trim()),
    }
    std::fs::write(&args.out, &body).with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("gemba: wrote {} ({} bytes)", args.out.display(), body.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_the_extension_and_kind() {
        assert_eq!(format_of("flame.svg".as_ref()), Some(Format::Svg));
        assert_eq!(format_of("cpu.pb.gz".as_ref()), Some(Format::Pprof));
        assert_eq!(format_of("heap.txt".as_ref()), Some(Format::Text));
        assert_eq!(format_of("out".as_ref()), None);
        assert!(path_for(Kind::Cpu, Format::Svg, 5, 100).unwrap().starts_with("/debug/pprof/flamegraph?seconds=5"));
        assert!(path_for(Kind::Cpu, Format::Text, 5, 100).is_err());
        assert!(path_for(Kind::Heap, Format::Svg, 5, 100).is_err());
    }
}
