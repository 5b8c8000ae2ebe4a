//! The streaming reader against calamine on hand-written packages: every edge case a
//! worksheet's XML can hold, read both ways and compared cell by cell.

use std::io::Write;
use std::sync::Arc;

use super::cells::NoProgress;
use super::*;
use crate::load::{self, Book};
use crate::sheet::Sheet;

const RELS: &str = r#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="xl/workbook.xml"/></Relationships>"#;

fn content_types(sheets: usize) -> String {
    let mut s = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/>"#,
    );
    for i in 1..=sheets {
        s.push_str(&format!(r#"<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="application/vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>"#));
    }
    s.push_str("</Types>");
    s
}

/// A package with the given sheets' XML (the `<sheetData>` and what follows), shared strings
/// and styles.
pub(super) fn package(sheets: &[(&str, &str)], sst: &[&str], date1904: bool) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opt = zip::write::SimpleFileOptions::default();
    z.start_file("[Content_Types].xml", opt).unwrap();
    z.write_all(content_types(sheets.len()).as_bytes()).unwrap();
    z.start_file("_rels/.rels", opt).unwrap();
    z.write_all(RELS.as_bytes()).unwrap();
    let mut wb = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"><workbookPr{}/><sheets>"#,
        if date1904 { r#" date1904="1""# } else { "" }
    );
    let mut rels = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">"#,
    );
    for (i, (name, _)) in sheets.iter().enumerate() {
        let n = i + 1;
        wb.push_str(&format!(r#"<sheet name="{name}" sheetId="{n}" r:id="rId{n}"/>"#));
        rels.push_str(&format!(r#"<Relationship Id="rId{n}" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target="worksheets/sheet{n}.xml"/>"#));
    }
    let k = sheets.len() + 1;
    rels.push_str(&format!(r#"<Relationship Id="rId{k}" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/styles" Target="styles.xml"/><Relationship Id="rId{}" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/sharedStrings" Target="sharedStrings.xml"/></Relationships>"#, k + 1));
    wb.push_str("</sheets></workbook>");
    z.start_file("xl/workbook.xml", opt).unwrap();
    z.write_all(wb.as_bytes()).unwrap();
    z.start_file("xl/_rels/workbook.xml.rels", opt).unwrap();
    z.write_all(rels.as_bytes()).unwrap();
    z.start_file("xl/styles.xml", opt).unwrap();
    z.write_all(br#"<?xml version="1.0" encoding="UTF-8"?><styleSheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"><numFmts count="2"><numFmt numFmtId="164" formatCode="yyyy-mm-dd"/><numFmt numFmtId="165" formatCode="[h]:mm:ss"/></numFmts><cellXfs count="5"><xf numFmtId="0"/><xf numFmtId="164"/><xf numFmtId="165"/><xf numFmtId="14"/><xf numFmtId="2"/></cellXfs></styleSheet>"#).unwrap();
    let mut s = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" uniqueCount="{}">"#,
        sst.len()
    );
    for x in sst {
        s.push_str(&format!("<si>{x}</si>"));
    }
    s.push_str("</sst>");
    z.start_file("xl/sharedStrings.xml", opt).unwrap();
    z.write_all(s.as_bytes()).unwrap();
    for (i, (_, xml)) in sheets.iter().enumerate() {
        z.start_file(format!("xl/worksheets/sheet{}.xml", i + 1), opt).unwrap();
        let doc = format!(
            r#"<?xml version="1.0" encoding="UTF-8" standalone="yes"?><worksheet xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships">{xml}</worksheet>"#
        );
        z.write_all(doc.as_bytes()).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// The sheet read both ways: (streaming, calamine); the streaming one is `Err` when it bailed.
pub(super) fn both(bytes: Vec<u8>, sheet: usize) -> (std::result::Result<Sheet, Failure>, crate::Result<Sheet>) {
    let limits = Limits::default();
    let budget = Budget::unlimited();
    let mut opened = load::open("t", bytes, &limits).unwrap();
    let names: Vec<String> = opened.sheets.iter().map(|s| s.name.clone()).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let fast = XlsxBook::open(opened.bytes.clone(), &name_refs, opened.date1904).unwrap();
    let a = fast.load_sheet(sheet, &limits, &budget, &NoProgress);
    assert!(matches!(opened.book, Book::Xlsx(_)));
    let b = load::load_sheet(
        "t",
        &mut opened.book,
        &Arc::clone(&opened.bytes),
        &names[sheet],
        opened.date1904,
        &limits,
        &budget,
    );
    (a, b)
}

/// Every cell, formula and merged range of two sheets agree.
pub(crate) fn assert_same(a: &Sheet, b: &Sheet, what: &str) {
    let ca: Vec<_> = a.cells().iter().collect();
    let cb: Vec<_> = b.cells().iter().collect();
    assert_eq!(ca.len(), cb.len(), "{what}: cell counts");
    for (x, y) in ca.iter().zip(&cb) {
        assert_eq!((x.row, x.col), (y.row, y.col), "{what}: positions");
        let same = match (x.value.as_number(), y.value.as_number()) {
            (Some(p), Some(q)) => p.to_bits() == q.to_bits() && x.value.type_name() == y.value.type_name(),
            _ => a.text(&x.value) == b.text(&y.value) && x.value.type_name() == y.value.type_name(),
        };
        assert!(same, "{what}: {:?} vs {:?} at row {} col {}", x.value, y.value, x.row, x.col);
    }
    let fa: Vec<_> = a.formulas().iter().map(|f| (f.at, f.text.clone())).collect();
    let fb: Vec<_> = b.formulas().iter().map(|f| (f.at, f.text.clone())).collect();
    assert_eq!(fa, fb, "{what}: formulas");
    assert_eq!(a.merged, b.merged, "{what}: merged ranges");
    assert_eq!(a.used, b.used, "{what}: used range");
}

fn agree(xml: &str, sst: &[&str], date1904: bool) -> Sheet {
    let (a, b) = both(package(&[("S", xml)], sst, date1904), 0);
    let a = a.unwrap_or_else(|e| panic!("streaming reader failed: {e:?}"));
    let b = b.unwrap();
    assert_same(&a, &b, xml);
    a
}

#[test]
fn values_types_and_dates_agree_with_calamine() {
    for date1904 in [false, true] {
        let s = agree(
            r#"<dimension ref="A1:H3"/><sheetData>
<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c><c r="C1" t="inlineStr"><is><t>inline &amp; </t></is></c><c r="D1" t="b"><v>1</v></c><c r="E1" t="b"><v>0</v></c><c r="F1" t="e"><v>#N/A</v></c><c r="G1" t="str"><v>a_x000D_b</v></c><c r="H1" t="inlineStr"><is><r><t>ri</t></r><r><t xml:space="preserve">ch </t></r></is></c></row>
<row r="2"><c r="A2" s="1"><v>45292</v></c><c r="B2" s="1"><v>45292.75</v></c><c r="C2" s="2"><v>1.5</v></c><c r="D2" s="3"><v>60</v></c><c r="E2" s="4"><v>0.30000000000000004</v></c><c r="F2"><v>-0</v></c><c r="G2"><v>1E-3</v></c><c r="H2"><v> 12 </v></c></row>
<row r="3"><c r="A3"><v>1234567890123</v></c><c r="B3" s="9"><v>7</v></c><c r="C3"/><c r="D3" t="n"><v></v></c><c r="E3" t="str"><v></v></c><c r="F3" t="d"><v>2024-01-02T00:00:00</v></c><c r="G3" t="s"><v>2</v></c></row>
</sheetData>"#,
            &[
                "<t>plain</t>",
                "<r><t>rich</t></r><r><t> text</t></r><rPh><t>x</t></rPh>",
                "<t xml:space=\"preserve\">  kept  </t>",
            ],
            date1904,
        );
        assert_eq!(s.get(1, 0).type_name(), "date");
        assert_eq!(s.get(1, 2).type_name(), "duration");
    }
}

#[test]
fn formulas_including_shared_ones_agree() {
    agree(
        r#"<sheetData>
<row r="1"><c r="A1"><v>1</v></c><c r="B1"><f>A1*2</f><v>2</v></c><c r="C1"><f t="shared" ref="C1:C4" si="0">A1+B1</f><v>3</v></c></row>
<row r="2"><c r="A2"><v>2</v></c><c r="B2"><f>A2&amp;"x"</f><v>2x</v></c><c r="C2"><f t="shared" si="0"/><v>4</v></c></row>
<row r="3"><c r="C3"><f t="shared" si="0"/></c><c r="D3"><f t="shared" si="7"/><v>1</v></c><c r="E3"><f></f></c></row>
<row r="4"><c r="C4"><f t="shared" si="0"/><v>9</v></c><c r="D4"><f t="array" ref="D4">SUM(A1:A2)</f><v>3</v></c></row>
</sheetData>"#,
        &[],
        false,
    );
}

#[test]
fn a_shared_formula_is_shifted_from_its_master_cell_not_its_ranges_top_left() {
    // As POI's 51710.xlsx has it: the range starts at C60, the master (with the text) is E60.
    let xml = r#"<sheetData>
<row r="60"><c r="C60"><v>1</v></c><c r="E60"><f t="shared" ref="C60:M61" si="3">$A60*E$2</f><v>0</v></c><c r="F60"><f t="shared" si="3"/><v>0</v></c></row>
<row r="61"><c r="D61"><f t="shared" si="3"/><v>0</v></c></row>
</sheetData>"#;
    let (a, b) = both(package(&[("S", xml)], &[], false), 0);
    let a = a.unwrap_or_else(|e| panic!("streaming reader failed: {e:?}"));
    let at = |r: u32, c: u32| {
        a.formulas().iter().find(|f| (f.at.row, f.at.col) == (r, c)).map(|f| f.text.to_string()).unwrap_or_default()
    };
    assert_eq!(at(59, 4), "$A60*E$2");
    assert_eq!(at(59, 5), "$A60*F$2");
    assert_eq!(at(60, 3), "$A61*D$2");
    // calamine shifts from C60: one of the reasons this reader is compared to it modulo anchors.
    let b = b.unwrap();
    let calamine_f60 = b.formulas().iter().find(|f| (f.at.row, f.at.col) == (59, 5)).map(|f| f.text.to_string());
    assert_eq!(calamine_f60.as_deref(), Some("$A60*H$2"));
}

#[test]
fn positions_without_references_merges_and_gaps_agree() {
    agree(
        r#"<sheetData><row><c><v>1</v></c><c><v>2</v></c></row><row r="5" spans="1:3"><c r="B5"><v>3</v></c><c><v>4</v></c></row><row/><row><c r="c7"><v>5</v></c></row></sheetData><mergeCells count="2"><mergeCell ref="A1:B1"/><mergeCell ref="C7"/></mergeCells><pageMargins left="0.7"/>"#,
        &[],
        false,
    );
}

#[test]
fn namespace_prefixes_and_whitespace_agree() {
    agree(
        "<x:sheetData xmlns:x=\"http://schemas.openxmlformats.org/spreadsheetml/2006/main\">\n  <x:row r=\"1\">\n    <x:c r=\"A1\" t=\"s\">\n      <x:v>0</x:v>\n    </x:c>\n    <x:c r=\"B1\"><x:v>2.5</x:v></x:c>\n  </x:row>\n</x:sheetData>",
        &["<t>pre</t>"],
        false,
    );
}

#[test]
fn what_it_is_unsure_of_goes_to_calamine() {
    for xml in [
        r#"<sheetData><row r="1"><c r="A1" t="e"><v>#SPILL!</v></c></row></sheetData>"#,
        r#"<sheetData><row r="1"><c r="A1" t="q"><v>1</v></c></row></sheetData>"#,
        r#"<sheetData><row r="1"><c r="A1"><v>1&#48;</v></c></row></sheetData>"#,
        r#"<sheetData><row r="1"><c r="A1"><extLst/></c></row></sheetData>"#,
        r#"<sheetData><row r="1"><c r="A1" t="s"><v>5</v></c></row></sheetData>"#,
    ] {
        let (a, _) = both(package(&[("S", xml)], &["<t>only</t>"], false), 0);
        assert!(matches!(a, Err(Failure::Bail(_))), "{xml}: {a:?}");
    }
}

#[test]
fn a_cell_beyond_the_grid_is_refused() {
    let xml = r#"<sheetData><row r="1"><c r="XFE1"><v>1</v></c></row></sheetData>"#;
    let (a, _) = both(package(&[("S", xml)], &[], false), 0);
    match a {
        Err(Failure::Error(e)) => assert!(e.to_string().contains("XFD"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn big_sheets_stream_through_the_inflate_thread() {
    let mut xml = String::from("<sheetData>");
    for r in 1..=40_000u32 {
        xml.push_str(&format!(
            r#"<row r="{r}"><c r="A{r}" t="s"><v>{}</v></c><c r="B{r}" s="1"><v>{}</v></c><c r="C{r}"><v>{}.{}</v></c><c r="D{r}"><v>{}</v></c></row>"#,
            r % 3,
            45_000 + r,
            r,
            r % 100,
            f64::from(r) / 7.0
        ));
    }
    xml.push_str("</sheetData>");
    let bytes = package(&[("Big", &xml)], &["<t>a</t>", "<t>b</t>", "<t>c</t>"], false);
    let (a, b) = both(bytes, 0);
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_same(&a, &b, "big");
    assert_eq!(a.cell_count(), 160_000);
}
