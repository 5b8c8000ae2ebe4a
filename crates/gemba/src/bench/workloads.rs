//! Workbooks generated with rust_xlsxwriter: the bundled example workspace (small, covering the
//! region shapes agents meet) and the benchmark workloads (small, sales_100k, wide, model, many).
//! Deterministic: the same bytes of data on every run.

use std::path::Path;

use anyhow::{Context, Result};
use rust_xlsxwriter::{DocProperties, ExcelDateTime, Format, Formula, Table, TableColumn, Workbook, Worksheet};

/// A small deterministic generator (xorshift64*), enough for spreading test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const REGIONS: [&str; 5] = ["North", "South", "East", "West", "Central"];
const PRODUCTS: [&str; 8] = ["Widget", "Gadget", "Gizmo", "Doohickey", "Sprocket", "Flange", "Bracket", "Valve"];
const CATEGORIES: [&str; 3] = ["Hardware", "Parts", "Tools"];
const REPS: [&str; 6] = ["Avery", "Blake", "Casey", "Devon", "Emery", "Finley"];
const CHANNELS: [&str; 3] = ["Online", "Retail", "Partner"];

fn fixed_props(wb: &mut Workbook) -> Result<()> {
    let created = ExcelDateTime::from_ymd(2026, 1, 1)?;
    wb.set_properties(&DocProperties::new().set_author("Gemba").set_creation_datetime(&created));
    Ok(())
}

fn sheet<'a>(wb: &'a mut Workbook, name: &str) -> Result<&'a mut Worksheet> {
    let ws = wb.add_worksheet();
    ws.set_name(name)?;
    Ok(ws)
}

/// The sales table: header at `top`, `rows` rows of 12 mixed columns, and a totals row.
fn write_sales(ws: &mut Worksheet, top: u32, rows: u32, seed: u64) -> Result<()> {
    let date = Format::new().set_num_format("yyyy-mm-dd");
    let money = Format::new().set_num_format("0.00");
    let headers = [
        "Date",
        "Region",
        "Product",
        "Category",
        "Rep",
        "Units",
        "Unit Price",
        "Discount",
        "Revenue",
        "Cost",
        "Margin",
        "Channel",
    ];
    for (c, h) in headers.iter().enumerate() {
        ws.write_string(top, c as u16, *h)?;
    }
    let mut rng = Rng::new(seed);
    let mut revenue_total = 0.0;
    let mut units_total = 0.0;
    for i in 0..rows {
        let r = top + 1 + i;
        let serial = 45_292.0 + f64::from(i % 730);
        ws.write_datetime_with_format(r, 0, ExcelDateTime::from_serial_datetime(serial)?, &date)?;
        ws.write_string(r, 1, rng.pick(&REGIONS))?;
        ws.write_string(r, 2, rng.pick(&PRODUCTS))?;
        ws.write_string(r, 3, rng.pick(&CATEGORIES))?;
        ws.write_string(r, 4, rng.pick(&REPS))?;
        let units = (1 + rng.below(500)) as f64;
        let price = (100 + rng.below(9_900)) as f64 / 100.0;
        let discount = rng.below(4) as f64 * 0.05;
        let revenue = (units * price * (1.0 - discount) * 100.0).round() / 100.0;
        let cost = (revenue * 0.6 * 100.0).round() / 100.0;
        ws.write_number(r, 5, units)?;
        ws.write_number_with_format(r, 6, price, &money)?;
        ws.write_number(r, 7, discount)?;
        ws.write_number_with_format(r, 8, revenue, &money)?;
        ws.write_number_with_format(r, 9, cost, &money)?;
        ws.write_number_with_format(r, 10, ((revenue - cost) * 100.0).round() / 100.0, &money)?;
        ws.write_string(r, 11, rng.pick(&CHANNELS))?;
        revenue_total += revenue;
        units_total += units;
    }
    let t = top + 1 + rows;
    ws.write_string(t, 0, "Total")?;
    let last = top + rows + 1; // 1-based row of the last data row
    ws.write_formula(t, 5, Formula::new(format!("=SUM(F{}:F{last})", top + 2)).set_result(units_total.to_string()))?;
    ws.write_formula(
        t,
        8,
        Formula::new(format!("=SUM(I{}:I{last})", top + 2)).set_result(format!("{:.2}", revenue_total)),
    )?;
    Ok(())
}

/// The example workspace: a few small workbooks with the shapes region detection must handle.
pub fn write_example(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    // sales.xlsx: a titled table with header on row 3 and a totals row; a parameters sheet.
    let mut wb = Workbook::new();
    fixed_props(&mut wb)?;
    let ws = sheet(&mut wb, "Sales")?;
    ws.write_string(0, 0, "Sales 2024 — all regions")?;
    write_sales(ws, 2, 40, 7)?;
    let ws = sheet(&mut wb, "Assumptions")?;
    for (r, (k, v)) in [("Tax rate", 0.2), ("Growth", 0.05), ("FX EUR/USD", 1.08), ("Years", 5.0)].iter().enumerate() {
        ws.write_string(r as u32, 0, *k)?;
        ws.write_number(r as u32, 1, *v)?;
    }
    wb.define_name("TaxRate", "=Assumptions!$B$1")?;
    wb.define_name("Growth", "=Assumptions!$B$2")?;
    wb.save(dir.join("sales.xlsx")).context("writing sales.xlsx")?;

    // budget.xlsx: side-by-side tables, merged group headers, outputs block, notes, an Excel table.
    let mut wb = Workbook::new();
    fixed_props(&mut wb)?;
    let ws = sheet(&mut wb, "Budget")?;
    let bold = Format::new().set_bold();
    ws.write_string(0, 0, "Department budget")?;
    ws.merge_range(1, 1, 1, 2, "2024", &bold)?;
    ws.merge_range(1, 3, 1, 4, "2025", &bold)?;
    for (c, h) in ["Department", "Plan", "Actual", "Plan", "Actual"].iter().enumerate() {
        ws.write_string(2, c as u16, *h)?;
    }
    let depts = ["Engineering", "Sales", "Marketing", "Support", "Finance", "Legal"];
    let mut rng = Rng::new(11);
    for (i, d) in depts.iter().enumerate() {
        let r = 3 + i as u32;
        ws.write_string(r, 0, *d)?;
        for c in 1..5u16 {
            ws.write_number(r, c, (50 + rng.below(450)) as f64 * 1000.0)?;
        }
    }
    // A second table beside the first, separated by an empty column.
    for (c, h) in ["Month", "Headcount"].iter().enumerate() {
        ws.write_string(2, 6 + c as u16, *h)?;
    }
    for (i, m) in ["Jan", "Feb", "Mar", "Apr"].iter().enumerate() {
        ws.write_string(3 + i as u32, 6, *m)?;
        ws.write_number(3 + i as u32, 7, (120 + i * 3) as f64)?;
    }
    // Outputs: labels with formulas (no cached values: uncalculated).
    ws.write_string(11, 0, "Total plan 2024")?;
    ws.write_formula(11, 1, "=SUM(B4:B9)")?;
    ws.write_string(12, 0, "Variance 2024")?;
    ws.write_formula(12, 1, "=SUM(C4:C9)-B12")?;
    ws.write_string(15, 0, "Figures are in USD and exclude one-off restructuring costs; see the finance wiki.")?;
    let ws = sheet(&mut wb, "Staff")?;
    let cols = ["Name", "Team", "Salary"];
    ws.add_table(
        0,
        0,
        4,
        2,
        &Table::new().set_name("StaffTable").set_columns(&cols.map(|c| TableColumn::new().set_header(c))),
    )?;
    for (i, (n, t, s)) in
        [("Ana", "Eng", 120.0), ("Bo", "Sales", 90.0), ("Cy", "Eng", 110.0), ("Di", "Ops", 80.0)].iter().enumerate()
    {
        let r = 1 + i as u32;
        ws.write_string(r, 0, *n)?;
        ws.write_string(r, 1, *t)?;
        ws.write_number(r, 2, *s * 1000.0)?;
    }
    wb.save(dir.join("budget.xlsx")).context("writing budget.xlsx")?;
    // The outputs were never calculated: drop their cached values, as a file saved by a
    // program that does not calculate would have them.
    drop_cached_values(&dir.join("budget.xlsx"), "xl/worksheets/sheet1.xml", &["B12", "B13"])?;

    // model.xlsx: a small version of the formula model.
    write_model(&dir.join("model.xlsx"), 60)?;
    Ok(())
}

/// Remove the cached `<v>` of formula cells in one worksheet part, rewriting only that part.
pub fn drop_cached_values(path: &Path, part: &str, cells: &[&str]) -> Result<()> {
    use std::io::{Read, Write};
    let bytes = std::fs::read(path)?;
    let mut zin = zip::ZipArchive::new(std::io::Cursor::new(bytes))?;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..zin.len() {
        let mut f = zin.by_index(i)?;
        let name = f.name()?.to_string();
        if name != part {
            drop(f);
            out.raw_copy_file(zin.by_index_raw(i)?)?;
            continue;
        }
        let mut xml = String::new();
        f.read_to_string(&mut xml)?;
        for cell in cells {
            let start = xml.find(&format!("<c r=\"{cell}\"")).with_context(|| format!("{cell} not in {part}"))?;
            let end = start + xml[start..].find("</c>").context("unclosed cell")?;
            let fixed = xml[start..end].replace("<v>0</v>", "").replace("<v></v>", "").replace(" t=\"str\"", "");
            xml.replace_range(start..end, &fixed);
        }
        out.start_file(name, zip::write::SimpleFileOptions::default())?;
        out.write_all(xml.as_bytes())?;
    }
    let data = out.finish()?.into_inner();
    std::fs::write(path, data)?;
    Ok(())
}

/// A three-sheet model: named inputs, a calculation sheet of `rows` × 4 formulas with their
/// values computed here (so cached values are right), and a summary with volatile functions
/// and a #DIV/0!.
pub fn write_model(path: &Path, rows: u32) -> Result<()> {
    let mut wb = Workbook::new();
    fixed_props(&mut wb)?;
    let (rate, growth, base) = (0.07, 0.02, 1000.0);
    let ws = sheet(&mut wb, "Inputs")?;
    for (r, (k, v)) in [("Rate", rate), ("Growth", growth), ("Base", base)].iter().enumerate() {
        ws.write_string(r as u32, 0, *k)?;
        ws.write_number(r as u32, 1, *v)?;
    }
    wb.define_name("Rate", "=Inputs!$B$1")?;
    wb.define_name("Growth", "=Inputs!$B$2")?;
    wb.define_name("Base", "=Inputs!$B$3")?;
    let ws = sheet(&mut wb, "Calc")?;
    for (c, h) in ["Period", "Revenue", "Cost", "Profit", "Cumulative"].iter().enumerate() {
        ws.write_string(0, c as u16, *h)?;
    }
    let mut cumulative = 0.0;
    let mut revenue = base;
    for i in 0..rows {
        let r = i + 1;
        let row1 = r + 1; // 1-based
        ws.write_number(r, 0, f64::from(i + 1))?;
        if i == 0 {
            ws.write_formula(r, 1, Formula::new("=Base").set_result(format!("{revenue}")))?;
        } else {
            revenue *= 1.0 + growth;
            ws.write_formula(
                r,
                1,
                Formula::new(format!("=B{}*(1+Growth)", row1 - 1)).set_result(format!("{revenue}")),
            )?;
        }
        let cost = revenue * (1.0 - rate) * 0.5;
        let profit = revenue - cost;
        cumulative += profit;
        ws.write_formula(r, 2, Formula::new(format!("=B{row1}*(1-Rate)*0.5")).set_result(format!("{cost}")))?;
        ws.write_formula(r, 3, Formula::new(format!("=B{row1}-C{row1}")).set_result(format!("{profit}")))?;
        let cum = if i == 0 { format!("=D{row1}") } else { format!("=E{}+D{row1}", row1 - 1) };
        ws.write_formula(r, 4, Formula::new(cum).set_result(format!("{cumulative}")))?;
    }
    let last = rows + 1;
    let ws = sheet(&mut wb, "Summary")?;
    ws.write_string(0, 0, "Total profit")?;
    ws.write_formula(0, 1, Formula::new(format!("=SUM(Calc!D2:D{last})")).set_result(format!("{cumulative}")))?;
    ws.write_string(1, 0, "Final cumulative")?;
    ws.write_formula(1, 1, Formula::new(format!("=Calc!E{last}")).set_result(format!("{cumulative}")))?;
    ws.write_string(2, 0, "As of")?;
    ws.write_formula(2, 1, Formula::new("=TODAY()").set_result("46349"))?;
    ws.write_string(3, 0, "Stamp")?;
    ws.write_formula(3, 1, Formula::new("=NOW()").set_result("46349.5"))?;
    ws.write_string(4, 0, "Last revenue")?;
    ws.write_formula(4, 1, Formula::new(format!("=OFFSET(Calc!B1,{rows},0)")).set_result(format!("{revenue}")))?;
    ws.write_string(5, 0, "Per empty")?;
    ws.write_formula(5, 1, Formula::new("=B1/0").set_result("#DIV/0!"))?;
    wb.save(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A workbook of one "Sales" sheet: the sales table with `rows` data rows.
pub fn write_sales_book(path: &Path, rows: u32, seed: u64) -> Result<()> {
    write_single_sales(path, rows, seed)
}

fn write_single_sales(path: &Path, rows: u32, seed: u64) -> Result<()> {
    let mut wb = Workbook::new();
    fixed_props(&mut wb)?;
    let ws = sheet(&mut wb, "Sales")?;
    write_sales(ws, 0, rows, seed)?;
    wb.save(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn write_wide(path: &Path, rows: u32, cols: u16) -> Result<()> {
    let mut wb = Workbook::new();
    fixed_props(&mut wb)?;
    let ws = sheet(&mut wb, "Wide")?;
    for c in 0..cols {
        ws.write_string(0, c, format!("m{}", c + 1))?;
    }
    let mut rng = Rng::new(3);
    for r in 1..=rows {
        for c in 0..cols {
            ws.write_number(r, c, rng.below(1_000_000) as f64 / 100.0)?;
        }
    }
    wb.save(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The benchmark workloads, into `dir`: small.xlsx, sales_100k.xlsx, wide.xlsx, model.xlsx, many/*.
pub fn write_bench(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir.join("many"))?;
    write_single_sales(&dir.join("small.xlsx"), 50, 1)?;
    write_single_sales(&dir.join("sales_100k.xlsx"), 100_000, 2)?;
    write_wide(&dir.join("wide.xlsx"), 5_000, 200)?;
    // ~8,000 formulas: 2,000 rows × 4 formula columns.
    write_model(&dir.join("model.xlsx"), 2_000)?;
    for i in 0..40 {
        write_single_sales(&dir.join("many").join(format!("book_{i:02}.xlsx")), 20, 100 + i)?;
    }
    Ok(())
}

/// The regression gate's small workspace, into `dir`: sales_10k.xlsx and model.xlsx (~8,000
/// formulas). Small, because the gate runs the server under valgrind.
pub fn write_gate(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    write_single_sales(&dir.join("sales_10k.xlsx"), 10_000, 2)?;
    write_model(&dir.join("model.xlsx"), 2_000)?;
    Ok(())
}
