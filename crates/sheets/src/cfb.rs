//! A structural check of OLE2 compound files (legacy .xls) before the reader sees them: sector
//! chains that loop or point outside the file make readers spin forever or allocate wildly, so
//! every chain is walked here once, with a step bound, and a bad file is refused.

const FREE: u32 = 0xFFFF_FFFF;
const END: u32 = 0xFFFF_FFFE;
const FAT_SECT: u32 = 0xFFFF_FFFD;
const DIFAT_SECT: u32 = 0xFFFF_FFFC;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

/// Check the compound file's allocation tables and chains; `Err` says what is broken.
pub fn validate(b: &[u8]) -> Result<(), String> {
    let shift = u16_at(b, 30).ok_or("header is truncated")?;
    if !(7..=16).contains(&shift) {
        return Err(format!("sector size 2^{shift} is invalid"));
    }
    let ss = 1usize << shift;
    let sectors = b.len().saturating_sub(512).div_ceil(ss) as u32;
    let sector = |s: u32| -> Option<&[u8]> {
        let start = 512usize.checked_add((s as usize).checked_mul(ss)?)?;
        b.get(start..(start + ss).min(b.len()))
    };
    let n_fat = u32_at(b, 44).ok_or("header is truncated")?;
    let first_dir = u32_at(b, 48).ok_or("header is truncated")?;
    let first_minifat = u32_at(b, 60).ok_or("header is truncated")?;
    let first_difat = u32_at(b, 68).ok_or("header is truncated")?;
    let n_difat = u32_at(b, 72).ok_or("header is truncated")?;
    if n_fat > sectors.saturating_add(1) || n_difat > sectors.saturating_add(1) {
        return Err(format!("header claims {n_fat} FAT sectors in a file of {sectors} sectors"));
    }
    // The DIFAT: 109 entries in the header, then a chain of DIFAT sectors.
    let mut fat_sectors: Vec<u32> = (0..109).filter_map(|i| u32_at(b, 76 + i * 4)).filter(|s| *s < FAT_SECT).collect();
    let per = ss / 4 - 1;
    let mut next = first_difat;
    let mut steps = 0;
    while next < FAT_SECT && steps <= n_difat {
        let sec = sector(next).ok_or(format!("DIFAT sector {next} lies outside the file"))?;
        fat_sectors.extend((0..per).filter_map(|i| u32_at(sec, i * 4)).filter(|s| *s < FAT_SECT));
        next = u32_at(sec, per * 4).unwrap_or(END);
        steps += 1;
    }
    if next < FAT_SECT {
        return Err("the DIFAT chain loops".into());
    }
    fat_sectors.truncate(n_fat as usize);
    let mut fat: Vec<u32> = Vec::with_capacity(fat_sectors.len() * ss / 4);
    for s in &fat_sectors {
        let sec = sector(*s).ok_or(format!("FAT sector {s} lies outside the file"))?;
        fat.extend((0..sec.len() / 4).filter_map(|i| u32_at(sec, i * 4)));
    }
    let walk = |start: u32, what: &str| -> Result<(), String> {
        let mut s = start;
        let mut steps = 0usize;
        while s < DIFAT_SECT {
            if s as usize >= fat.len() {
                return Err(format!("the {what} chain points past the allocation table (sector {s})"));
            }
            steps += 1;
            if steps > fat.len() {
                return Err(format!("the {what} chain loops"));
            }
            s = fat[s as usize];
        }
        if s == FREE || s == FAT_SECT || s == DIFAT_SECT {
            if steps == 0 && s == FREE {
                return Ok(());
            }
            return Err(format!("the {what} chain ends in a free or reserved sector"));
        }
        Ok(())
    };
    walk(first_dir, "directory")?;
    if first_minifat != END {
        walk(first_minifat, "mini FAT")?;
    }
    // Every large stream named in the directory must have a sound chain.
    let mut dir = first_dir;
    let mut seen = 0usize;
    while dir < DIFAT_SECT && (dir as usize) < fat.len() && seen <= fat.len() {
        let sec = sector(dir).ok_or("directory sector lies outside the file")?;
        for e in 0..sec.len() / 128 {
            let entry = &sec[e * 128..(e + 1) * 128];
            let kind = entry[66];
            let start = u32_at(entry, 116).unwrap_or(END);
            let size = u32_at(entry, 120).unwrap_or(0);
            if kind == 2 && size >= 4096 {
                walk(start, "stream")?;
            }
        }
        dir = fat[dir as usize];
        seen += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate;

    /// A file of the shared corpus (`GEMBA_CORPUS=DIR` or `../shared/corpus/files`); missing, the
    /// test fails (leave corpus tests out with `--skip corpus_`).
    fn corpus(name: &str) -> Vec<u8> {
        let dir = match std::env::var("GEMBA_CORPUS") {
            Ok(d) if !d.is_empty() && d != "none" => d,
            _ => format!("{}/../../../shared/corpus/files", env!("CARGO_MANIFEST_DIR")),
        };
        std::fs::read(format!("{dir}/{name}")).unwrap_or_else(|e| {
            panic!("corpus file {dir}/{name}: {e} (set GEMBA_CORPUS=DIR or run with --skip corpus_)")
        })
    }

    #[test]
    fn refuses_what_is_not_a_compound_file() {
        assert!(validate(&[0u8; 10]).is_err());
        assert!(validate(&[]).is_err());
    }

    #[test]
    fn corpus_loops_are_refused_and_sound_files_accepted() {
        assert_eq!(validate(&corpus("gh-calamine__issues.xls")), Ok(()));
        let e = validate(&corpus("gh-phpspreadsheet__oleloop.xls")).unwrap_err();
        assert!(e.contains("loop") || e.contains("outside") || e.contains("past"), "{e}");
    }
}
