//! The `libreoffice` engine: LibreOffice headless opens the file, recalculates every
//! formula (the profile says "always recalculate on load") and converts it to xlsx; calamine
//! then reads the recomputed values back from the converted file.
//!
//! soffice runs inside the `one` child process, in that child's process group, so the
//! parent's timeout kills LibreOffice along with the child.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context, Result, anyhow, bail};
use calamine::{Data, Range, Reader, Xlsx, open_workbook};
use tempfile::TempDir;

use crate::cached::data_to_value;
use crate::engines::{LoadFailure, LoadedBook};
use crate::value::Value;

/// The LibreOffice launcher, looked up on `PATH`.
const SOFFICE: &str = "soffice";

/// Target of `--convert-to`: the xlsx export filter.
const EXPORT_FILTER: &str = "xlsx:Calc MS Excel 2007 XML";

/// What soffice prints (with exit code 0) when it cannot open the input.
const NOT_LOADED: &str = "source file could not be loaded";

/// Base name of the input copy and of the converted file.
const BOOK_STEM: &str = "book";

/// User settings of the profile: recalculate OOXML and ODF files on load, always (0).
/// LibreOffice's default is to trust the cached values of files saved by Excel.
const REGISTRY_MODIFICATIONS: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<oor:items xmlns:oor="http://openoffice.org/2001/registry" xmlns:xs="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
<item oor:path="/org.openoffice.Office.Calc/Formula/Load"><prop oor:name="OOXMLRecalcMode" oor:op="fuse"><value>0</value></prop></item>
<item oor:path="/org.openoffice.Office.Calc/Formula/Load"><prop oor:name="ODFRecalcMode" oor:op="fuse"><value>0</value></prop></item>
</oor:items>
"#;

/// The temporary directory of one run: the LibreOffice user profile in `profile/`, and
/// the work directory of each conversion. A child killed on timeout leaves its work
/// directory behind; deleting this directory on drop removes it too.
pub struct RunDir {
    dir: TempDir,
}

impl RunDir {
    pub fn create() -> Result<RunDir> {
        let dir = tempfile::Builder::new()
            .prefix("recalc-fidelity-lo-")
            .tempdir()
            .context("creating the LibreOffice run directory")?;
        let user = profile_dir(dir.path()).join("user");
        std::fs::create_dir_all(&user).context("creating the LibreOffice profile directory")?;
        std::fs::write(user.join("registrymodifications.xcu"), REGISTRY_MODIFICATIONS)
            .context("writing registrymodifications.xcu")?;
        Ok(RunDir { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

fn profile_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("profile")
}

/// The run directory a book converts in: the run's shared one, or its own when `one` is
/// run by hand without `--lo-dir`.
enum RunDirRef {
    Shared(PathBuf),
    Own(RunDir),
}

impl RunDirRef {
    fn path(&self) -> &Path {
        match self {
            RunDirRef::Shared(path) => path,
            RunDirRef::Own(run_dir) => run_dir.path(),
        }
    }
}

/// `soffice --version` (e.g. `LibreOffice 7.4.7.2 40(Build:2)`); fails when LibreOffice is
/// not installed.
pub fn version(run_dir: &RunDir) -> Result<String> {
    let output = soffice(run_dir.path())
        .arg("--version")
        .output()
        .with_context(|| format!("running {SOFFICE} --version (is LibreOffice installed?)"))?;
    if !output.status.success() {
        bail!("{SOFFICE} --version failed ({}): {}", output.status, output_text(&output));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// A workbook copied into a work directory, converted by `evaluate`, read by `read_back`.
pub struct LibreOfficeBook {
    /// Declared before `run_dir`, so that it is deleted first.
    work: TempDir,
    run_dir: RunDirRef,
    input: PathBuf,
    converted: Option<PathBuf>,
    sheets: HashMap<String, Range<Data>>,
}

/// Copies the file into a fresh work directory under a plain name, so that no corpus file
/// name can be mistaken for an option by soffice. The extension is kept.
pub fn load(bytes: &[u8], path: &Path, run_dir: Option<&Path>) -> Result<Box<dyn LoadedBook>> {
    let run_dir = match run_dir {
        Some(dir) => RunDirRef::Shared(dir.to_path_buf()),
        None => RunDirRef::Own(RunDir::create()?),
    };
    let work =
        tempfile::Builder::new().prefix("work-").tempdir_in(run_dir.path()).context("creating a work directory")?;
    let input = work.path().join(format!("{BOOK_STEM}.{}", extension(path)));
    std::fs::write(&input, bytes).context("copying the input file")?;
    Ok(Box::new(LibreOfficeBook { work, run_dir, input, converted: None, sheets: HashMap::new() }))
}

fn extension(path: &Path) -> String {
    path.extension().map_or_else(|| "xlsx".to_string(), |e| e.to_string_lossy().to_ascii_lowercase())
}

impl LoadedBook for LibreOfficeBook {
    /// Runs the whole conversion: start LibreOffice, load, recalculate, save as xlsx.
    fn evaluate(&mut self) -> Result<()> {
        let outdir = self.work.path().join("out");
        let output = soffice(self.run_dir.path())
            .arg("--convert-to")
            .arg(EXPORT_FILTER)
            .arg("--outdir")
            .arg(&outdir)
            .arg(&self.input)
            .output()
            .with_context(|| format!("running {SOFFICE}"))?;
        let converted = outdir.join(format!("{BOOK_STEM}.xlsx"));
        if !output.status.success() || !converted.is_file() {
            return Err(conversion_error(&output));
        }
        self.converted = Some(converted);
        Ok(())
    }

    fn read_back(&mut self) -> Result<()> {
        let converted = self.converted.as_deref().context("the file was not converted")?;
        self.sheets = read_sheets(converted)?;
        Ok(())
    }

    fn value(&self, sheet: &str, row: u32, col: u32) -> Option<Value> {
        let range = self.sheets.get(sheet)?;
        Some(range.get_value((row, col)).map_or(Value::Empty, data_to_value))
    }
}

/// `soffice` with the flags every call uses and the run's profile.
fn soffice(run_dir: &Path) -> Command {
    let mut command = Command::new(SOFFICE);
    command
        .args(["--headless", "--norestore", "--nologo", "--nodefault", "--nolockcheck"])
        .arg(format!("-env:UserInstallation={}", file_url(&profile_dir(run_dir))))
        .stdin(Stdio::null());
    command
}

/// A load failure when soffice says it could not open the file; otherwise an error with
/// its exit status and output.
fn conversion_error(output: &Output) -> anyhow::Error {
    let text = output_text(output);
    if text.contains(NOT_LOADED) {
        return LoadFailure(format!("LibreOffice: {text}")).into();
    }
    anyhow!("soffice wrote no xlsx ({}): {text}", output.status)
}

/// stdout and stderr of soffice, without the javaldx warning, on one line.
fn output_text(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    stdout
        .lines()
        .chain(stderr.lines())
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.contains("javaldx"))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Every sheet of the converted file. A sheet calamine cannot read is left out, so its
/// cells count as on a missing sheet.
fn read_sheets(path: &Path) -> Result<HashMap<String, Range<Data>>> {
    let mut workbook: Xlsx<_> = open_workbook(path).context("calamine cannot open the converted file")?;
    let mut sheets = HashMap::new();
    for name in workbook.sheet_names() {
        if let Ok(range) = workbook.worksheet_range(&name) {
            sheets.insert(name, range);
        }
    }
    Ok(sheets)
}

/// `file://` URL of an absolute path, percent-encoding every byte outside the unreserved
/// set and `/`.
fn file_url(path: &Path) -> String {
    let mut url = String::from("file://");
    for byte in path.as_os_str().as_encoded_bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(byte) {
            url.push(char::from(*byte));
        } else {
            url.push_str(&format!("%{byte:02X}"));
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_are_percent_encoded() {
        assert_eq!(file_url(Path::new("/tmp/lo-profile_1")), "file:///tmp/lo-profile_1");
        assert_eq!(file_url(Path::new("/tmp/a b/é")), "file:///tmp/a%20b/%C3%A9");
    }

    #[test]
    fn input_keeps_the_extension() {
        assert_eq!(extension(Path::new("/c/Report.XLSM")), "xlsm");
        assert_eq!(extension(Path::new("/c/-rf")), "xlsx");
    }

    #[test]
    fn unreadable_source_is_a_load_failure() {
        use std::os::unix::process::ExitStatusExt;
        let output = |stderr: &str| Output {
            status: std::process::ExitStatus::from_raw(0),
            stdout: Vec::new(),
            stderr: format!("Warning: failed to launch javaldx\n{stderr}\n").into_bytes(),
        };
        let rejected = conversion_error(&output("Error: source file could not be loaded"));
        assert!(rejected.is::<LoadFailure>());
        assert_eq!(rejected.to_string(), "LibreOffice: Error: source file could not be loaded");
        assert!(!conversion_error(&output("something else")).is::<LoadFailure>());
    }

    #[test]
    fn profile_has_the_recalc_settings() -> Result<()> {
        let run_dir = RunDir::create()?;
        let xcu = std::fs::read_to_string(run_dir.path().join("profile/user/registrymodifications.xcu"))?;
        assert!(xcu.contains(r#"oor:name="OOXMLRecalcMode" oor:op="fuse"><value>0</value>"#));
        assert!(xcu.contains(r#"oor:name="ODFRecalcMode" oor:op="fuse"><value>0</value>"#));
        Ok(())
    }
}
