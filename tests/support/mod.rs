//! Shared by the integration tests that write a site file.

/// `[site]` and `[enterprise]` of a test site (a valid credit code and permit number).
pub fn site_header(id: &str) -> String {
    format!(
        "[site]\nid = \"{id}\"\n[enterprise]\nname = \"测试\"\ncredit_code = \"91350100M000100Y43\"\npermit_no = \"91350100M000100Y43001P\"\nindustry = \"steel\"\ngrade = \"B\"\nregion = \"410500\"\n"
    )
}
