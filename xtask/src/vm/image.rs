//! The host tools and the cached VM image.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

/// Where images are cached unless `CORRAL_VM_CACHE` says otherwise: outside the clone, so a
/// fresh clone on the same machine reuses them.
const DEFAULT_CACHE: &str = "/var/cache/corral-vm";

/// A built image: `root.img` (ext4, the whole root filesystem), the kernel and its initrd.
pub struct Image {
    pub dir: PathBuf,
}

impl Image {
    pub fn root(&self) -> PathBuf {
        self.dir.join("root.img")
    }
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
}

/// Installs debootstrap, e2fsprogs and qemu-system-x86 when missing (`host-deps.sh`).
pub fn ensure_host_tools(scripts: &Path) -> Result<()> {
    let status = Command::new(scripts.join("host-deps.sh"))
        .status()
        .context("run scripts/vm/host-deps.sh")?;
    if !status.success() {
        bail!("scripts/vm/host-deps.sh failed ({status})");
    }
    Ok(())
}

/// The cache key: a hash of the recipe. `build-image.sh` holds the package list and every
/// setup step; the guest payload runner and the list are read from the share at boot, so
/// changing them needs no new image.
fn recipe_key(scripts: &Path) -> Result<String> {
    let out = Command::new("sha256sum")
        .arg(scripts.join("build-image.sh"))
        .output()
        .context("run sha256sum")?;
    if !out.status.success() {
        bail!(
            "sha256sum build-image.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let hex = String::from_utf8(out.stdout)?;
    Ok(format!("bookworm-{}", &hex[..16]))
}

/// Returns the cached image for the current recipe, building it first if there is none.
pub fn ensure(scripts: &Path, rebuild: bool) -> Result<Image> {
    let cache = std::env::var_os("CORRAL_VM_CACHE")
        .map_or_else(|| PathBuf::from(DEFAULT_CACHE), PathBuf::from);
    let key = recipe_key(scripts)?;
    let image = Image {
        dir: cache.join(&key),
    };
    if rebuild && image.dir.exists() {
        fs::remove_dir_all(&image.dir)
            .with_context(|| format!("remove {}", image.dir.display()))?;
    }
    if image.root().exists() {
        println!("vm-test: image {} (cached)", image.dir.display());
        return Ok(image);
    }
    fs::create_dir_all(&cache).with_context(|| format!("create {}", cache.display()))?;
    // Built beside its final place and renamed in whole: a crash or a concurrent build never
    // leaves a half image under the key.
    let tmp = cache.join(format!("{key}.tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    println!(
        "vm-test: building image {} (debootstrap, ~1-2 min)",
        image.dir.display()
    );
    let started = Instant::now();
    let status = Command::new(scripts.join("build-image.sh"))
        .arg(&tmp)
        .status();
    let built = match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(anyhow::anyhow!("scripts/vm/build-image.sh failed ({s})")),
        Err(e) => Err(anyhow::Error::new(e).context("run scripts/vm/build-image.sh")),
    };
    if let Err(e) = built {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if let Err(e) = fs::rename(&tmp, &image.dir) {
        // Another run built the same recipe meanwhile: use that one.
        let _ = fs::remove_dir_all(&tmp);
        if !image.root().exists() {
            return Err(e)
                .with_context(|| format!("rename {} to {}", tmp.display(), image.dir.display()));
        }
    }
    println!(
        "vm-test: image built in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(image)
}
