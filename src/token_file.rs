//! Reading token files: a secretfs token (`--token-file`, `SECRETFS_TOKEN_FILE`) or a platform's
//! identity token (a Kubernetes projected token). The IO side of `auth`, which stays pure.

use zeroize::Zeroizing;

use crate::auth::Token;

/// A token read from a file, with a warning when the file is open to more than its owner.
pub struct TokenFile {
    pub token: Token,
    /// Says what to run when group or others may read the file: a Kubernetes Secret volume is
    /// 0644 unless `defaultMode` says otherwise, so this warns instead of refusing.
    pub warning: Option<String>,
}

/// The largest token file read: a secretfs token is under 100 bytes, a platform's identity
/// token (a Kubernetes projected token) about 1 KiB.
pub const TOKEN_FILE_MAX: u64 = 64 * 1024;

/// Reads a token file (a secretfs token, or a platform's identity token): the first line,
/// trimmed, into a buffer sized once from the file's length (it never moves, so no copy of the
/// token is left behind in freed memory) and wiped after. Errors name the file, never its
/// content.
pub fn read_token_file(path: &std::path::Path) -> Result<TokenFile, String> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let fail = |why: String| format!("cannot read token file {}: {why}", path.display());
    let file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
    let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
    let size = meta.len().min(TOKEN_FILE_MAX) + 1;
    let mut text = Zeroizing::new(String::with_capacity(size as usize));
    file.take(TOKEN_FILE_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    if text.len() as u64 > TOKEN_FILE_MAX {
        return Err(fail(format!("it is larger than {TOKEN_FILE_MAX} bytes")));
    }
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    let mode = meta.permissions().mode() & 0o777;
    let warning = (mode & 0o077 != 0).then(|| {
        format!(
            "token file {} can be read by group or others (mode {mode:04o}); run \"chmod 600 {}\" \
             (in a Kubernetes Secret volume: defaultMode: 0400)",
            path.display(),
            path.display()
        )
    });
    Ok(TokenFile {
        token: Token::from_string(token.to_owned()),
        warning,
    })
}
