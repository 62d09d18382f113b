//! Embeds the esbuild output (`web/dist/`, built by `node web/build.mjs`) in the crate: every
//! file named in `dist/manifest.json` becomes an `include_bytes!`. Without a bundle the crate
//! still builds, and the pages answer 503 `pages-not-built` saying how to build them.

use std::fmt::Write;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dist");
    println!("cargo:rerun-if-changed={}", dir.display());
    println!(
        "cargo:rerun-if-changed={}",
        dir.join("manifest.json").display()
    );
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("bundle.rs");
    let code = match std::fs::read_to_string(dir.join("manifest.json")) {
        Ok(text) => generate(&dir, &text),
        Err(_) => "/// No bundle was built.\npub static BUNDLE: Option<Bundle> = None;\n".into(),
    };
    std::fs::write(out, code).unwrap();
}

fn generate(dir: &Path, text: &str) -> String {
    let m: serde_json::Value = serde_json::from_str(text).expect("dist/manifest.json is JSON");
    let mut s = String::from(
        "/// The bundle esbuild built.\npub static BUNDLE: Option<Bundle> = Some(Bundle {\n",
    );
    let str_of = |v: &serde_json::Value| format!("{:?}", v.as_str().expect("a string"));
    let list = |v: &serde_json::Value| {
        let items: Vec<String> = v.as_array().unwrap().iter().map(str_of).collect();
        format!("&[{}]", items.join(", "))
    };
    writeln!(s, "    style: {},", str_of(&m["style"])).unwrap();
    for page in ["embed", "studio", "admin"] {
        let p = &m["pages"][page];
        writeln!(
            s,
            "    {page}: PageAssets {{ script: {}, preload: {} }},",
            str_of(&p["script"]),
            list(&p["preload"])
        )
        .unwrap();
    }
    s.push_str("    files: &[\n");
    for f in m["files"].as_array().unwrap() {
        let name = f.as_str().unwrap();
        let path = dir.join(name);
        assert!(
            path.exists(),
            "{} is in the manifest but not in dist/",
            path.display()
        );
        writeln!(
            s,
            "        ({name:?}, include_bytes!({:?})),",
            path.display().to_string()
        )
        .unwrap();
    }
    s.push_str("    ],\n});\n");
    s
}
