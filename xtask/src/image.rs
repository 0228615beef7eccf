//! Builds the container image without a Docker daemon and without Docker Hub.
//!
//! Two layers, so that a new daemon changes only the small one:
//!
//! 1. a Debian root filesystem made by `mmdebstrap` (variant `essential`: no apt, no init) from
//!    this machine's own apt sources for its own suite, holding the packages the daemon's `ldd`
//!    lists and [`image::RUNTIME_PACKAGES`]; the same suite as the build machine, so the glibc the
//!    binary was linked against is the one it runs with. It is committed as a base image, keyed by
//!    suite, sources and package set, and reused until one of them changes (`--rebuild-base` makes
//!    a new one, e.g. for Debian's security updates);
//! 2. the release daemon (kernel programs embedded; debug info stripped, symbols kept), with the
//!    configuration the DaemonSet relies on: entrypoint, working directory, user and labels.
//!
//! buildah writes both into podman's local storage (root's, `/var/lib/containers`); nothing is
//! pulled. The image is rebuilt only when the daemon binary or the base changes.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};
use clap::Args;
use mirror_tests::image;

use crate::{
    build::{self, BuildArgs},
    setup,
    util::{is_root, run_command, workspace_root},
};

#[derive(Debug, Args, Default)]
pub struct ImageArgs {
    /// Make a new Debian base layer even when one for the same suite, sources and packages exists.
    #[arg(long)]
    pub rebuild_base: bool,
}

/// mmdebstrap's settings beyond the package list; part of the base layer's key.
const MMDEBSTRAP_OPTIONS: &[&str] = &[
    "--variant=essential",
    // Merged /usr without the usrmerge package (which would pull in perl).
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    // Documentation stays out; the licences stay in.
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/locale/*",
];

pub fn run(args: &ImageArgs) -> Result<()> {
    let started = Instant::now();
    let reference = build_image(args)?;
    print_summary(&reference)?;
    eprintln!("image: done in {:.0?}", started.elapsed());
    Ok(())
}

/// Builds the image unless it is up to date; returns its local reference.
pub fn build_image(args: &ImageArgs) -> Result<String> {
    if !is_root() {
        bail!("building the image writes root's container storage: run as root (sudo -E cargo xtask image)");
    }
    setup::ensure_image_tools()?;
    let daemon = build::run_build(&BuildArgs { debug: false })?;
    let daemon_sha = mirror_tests::sha256_hex(&std::fs::read(&daemon).context("read the daemon binary")?);
    let work = workspace_root().join("target/image");
    std::fs::create_dir_all(&work)?;

    let suite = host_suite()?;
    let sources = debian_sources(&suite)?;
    let mut packages = library_packages(&daemon)?;
    packages.extend(image::RUNTIME_PACKAGES.iter().map(|p| p.to_string()));
    packages.sort();
    packages.dedup();
    let key_text = format!("{suite}\n{sources}\n{}\n{}", packages.join(","), MMDEBSTRAP_OPTIONS.join(" "));
    let base_key = mirror_tests::sha256_hex(key_text.as_bytes())[..16].to_string();
    let base = format!("localhost/shadow-mirror/base:{base_key}");

    let reference = image::local_reference();
    if !args.rebuild_base
        && image::label(&reference, image::LABEL_DAEMON_SHA256).as_deref() == Some(daemon_sha.as_str())
        && image::label(&reference, image::LABEL_BASE).as_deref() == Some(base_key.as_str())
    {
        eprintln!("image: {reference} is up to date (same daemon binary, same base)");
        return Ok(reference);
    }

    if args.rebuild_base || !image::exists(&base) {
        let started = Instant::now();
        build_base(&work, &suite, &sources, &packages, &base)?;
        eprintln!("image: base layer {base} built in {:.0?}", started.elapsed());
    } else {
        eprintln!("image: reusing base layer {base} ({suite}: {})", packages.join(", "));
    }

    let started = Instant::now();
    let previous = image_id(&reference);
    let stripped = work.join("mirror-daemon");
    run_command(Command::new("objcopy").arg("--strip-debug").arg(&daemon).arg(&stripped))?;
    commit_daemon_layer(&base, &base_key, &stripped, &daemon_sha, &reference)?;
    smoke_test(&reference)?;
    // The image this one replaces keeps no name: remove it (unless a container still uses it).
    if let Some(old) = previous.filter(|old| image_id(&reference).as_ref() != Some(old)) {
        let _ = Command::new("podman").args(["rmi", &old]).output();
    }
    eprintln!("image: daemon layer committed and checked in {:.0?}", started.elapsed());
    Ok(reference)
}

/// The machine's Debian suite (`VERSION_CODENAME` of /etc/os-release).
fn host_suite() -> Result<String> {
    let text = std::fs::read_to_string("/etc/os-release").context("read /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
        .context("no VERSION_CODENAME in /etc/os-release: the image is built on Debian")
}

/// One apt source entry.
#[derive(Debug, PartialEq)]
struct Source {
    uris: Vec<String>,
    suites: Vec<String>,
    components: Vec<String>,
    signed_by: Option<String>,
}

/// This machine's apt sources for `suite` (and `suite-updates`, `suite-security`...) as one deb822
/// file: the image comes from the mirror apt already uses, whatever it is.
fn debian_sources(suite: &str) -> Result<String> {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        more.sort();
        files.extend(more);
    }
    let mut sources = Vec::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => sources.extend(parse_deb822(&text)),
            Some("list") => sources.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    let ours = |s: &String| s == suite || s.starts_with(&format!("{suite}-"));
    let mut text = String::new();
    for mut source in sources {
        source.suites.retain(ours);
        if source.suites.is_empty() || source.uris.is_empty() {
            continue;
        }
        text.push_str(&format!(
            "Types: deb\nURIs: {}\nSuites: {}\nComponents: {}\n",
            source.uris.join(" "),
            source.suites.join(" "),
            source.components.join(" ")
        ));
        if let Some(key) = source.signed_by {
            text.push_str(&format!("Signed-By: {key}\n"));
        }
        text.push('\n');
    }
    if text.is_empty() {
        bail!(
            "no apt source for {suite} in /etc/apt/sources.list{{,.d/}}: the image's packages come from there"
        );
    }
    Ok(text)
}

/// Entries of a deb822 `.sources` file with type `deb` that are not disabled.
fn parse_deb822(text: &str) -> Vec<Source> {
    let mut entries = Vec::new();
    for paragraph in text.split("\n\n") {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in paragraph.lines() {
            if line.starts_with('#') {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                // A continuation line (e.g. an inline key); kept with its field.
                if let Some((_, value)) = fields.last_mut() {
                    value.push('\n');
                    value.push_str(line.trim());
                }
            } else if let Some((key, value)) = line.split_once(':') {
                fields.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let words =
            |name: &str| field(name).map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>());
        let enabled = field("enabled").is_none_or(|v| v != "no");
        if enabled && words("types").is_some_and(|t| t.iter().any(|t| t == "deb")) {
            entries.push(Source {
                uris: words("uris").unwrap_or_default(),
                suites: words("suites").unwrap_or_default(),
                components: words("components").unwrap_or_default(),
                // An inline key (several lines) is not a path: leave it to the default keyring.
                signed_by: field("signed-by").filter(|v| !v.contains('\n')),
            });
        }
    }
    entries
}

/// `deb [options] URI SUITE COMPONENT...` lines of a one-line-style `.list` file.
fn parse_one_line(text: &str) -> Vec<Source> {
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else { continue };
        let mut rest = rest.trim_start();
        let mut signed_by = None;
        if let Some(options) = rest.strip_prefix('[') {
            let (options, after) = options.split_once(']').unwrap_or((options, ""));
            signed_by =
                options.split_whitespace().find_map(|o| o.strip_prefix("signed-by=")).map(String::from);
            rest = after;
        }
        let mut words = rest.split_whitespace().map(String::from);
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else { continue };
        entries.push(Source { uris: vec![uri], suites: vec![suite], components: words.collect(), signed_by });
    }
    entries
}

/// The Debian packages holding the shared libraries `binary` links to (`ldd`, then `dpkg -S`).
fn library_packages(binary: &Path) -> Result<Vec<String>> {
    let out = Command::new("ldd").arg(binary).output().context("run ldd")?;
    if !out.status.success() {
        bail!("ldd {}: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    }
    let mut packages = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)";
        // the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, target)) => target.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else { continue };
        let owner = Command::new("dpkg").args(["-S", path]).output().context("run dpkg -S")?;
        let owner = String::from_utf8_lossy(&owner.stdout);
        let Some(package) = owner.lines().next().and_then(|l| l.split(':').next()).filter(|p| !p.is_empty())
        else {
            bail!("{path}, which {} links to, belongs to no Debian package", binary.display());
        };
        packages.push(package.to_string());
    }
    Ok(packages)
}

/// The Debian root filesystem, committed as a one-layer image `base`.
fn build_base(work: &Path, suite: &str, sources: &str, packages: &[String], base: &str) -> Result<()> {
    let sources_file = work.join("debian.sources");
    std::fs::write(&sources_file, sources)?;
    let rootfs = work.join("rootfs.tar");
    // dpkg's progress goes to a file; the log is shown when something fails.
    let log = work.join("mmdebstrap.log");
    eprintln!("image: mmdebstrap {suite} (log: {})", log.display());
    let built = run_command(
        Command::new("mmdebstrap")
            .arg(format!("--logfile={}", log.display()))
            .args(MMDEBSTRAP_OPTIONS)
            .arg(format!("--include={}", packages.join(",")))
            .arg(format!("--customize-hook=mkdir -p \"$1{}\"", image::WORKDIR))
            .arg(suite)
            .arg(&rootfs)
            .arg(&sources_file),
    );
    if let Err(err) = built {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        eprintln!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        return Err(err);
    }
    let container = buildah_output(Command::new("buildah").args(["from", "--quiet", "scratch"]))?;
    let committed = with_container(&container, || {
        run_command(Command::new("buildah").args(["add", "--quiet", &container]).arg(&rootfs).arg("/"))?;
        run_command(Command::new("buildah").args([
            "config",
            "--created-by",
            &format!("mmdebstrap {suite} ({})", packages.join(", ")),
            &container,
        ]))?;
        run_command(Command::new("buildah").args(["commit", "--quiet", "--rm", &container, base]))
    });
    std::fs::remove_file(&rootfs)?;
    committed
}

/// The daemon on top of `base`, with the image configuration, committed as `reference`.
fn commit_daemon_layer(
    base: &str,
    base_key: &str,
    binary: &Path,
    daemon_sha: &str,
    reference: &str,
) -> Result<()> {
    let container = buildah_output(Command::new("buildah").args(["from", "--quiet", "--pull=never", base]))?;
    let revision = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    with_container(&container, || {
        run_command(
            Command::new("buildah")
                .args(["copy", "--quiet", "--chmod", "0755", &container])
                .arg(binary)
                .arg(image::BINARY),
        )?;
        let labels = [
            ("org.opencontainers.image.title", "shadow-mirror"),
            (
                "org.opencontainers.image.description",
                "eBPF traffic mirror: replays production model traffic to shadow models and compares",
            ),
            ("org.opencontainers.image.version", image::VERSION),
            ("org.opencontainers.image.licenses", "Apache-2.0"),
            ("org.opencontainers.image.revision", &revision),
            (image::LABEL_DAEMON_SHA256, daemon_sha),
            (image::LABEL_BASE, base_key),
        ];
        let mut config = Command::new("buildah");
        config.arg("config");
        for (key, value) in labels {
            config.arg("--label").arg(format!("{key}={value}"));
        }
        config
            .args(["--entrypoint", &format!("[\"{}\"]", image::BINARY)])
            .args(["--cmd", "[\"--help\"]"])
            .args(["--workingdir", image::WORKDIR])
            // Root in the container; the runtime grants only the capabilities the DaemonSet adds.
            .args(["--user", "0:0"])
            .args(["--created-by", &format!("COPY mirror-daemon {}", image::BINARY)])
            .arg(&container);
        run_command(&mut config)?;
        run_command(Command::new("buildah").args(["commit", "--quiet", "--rm", &container, reference]))
    })
}

/// Runs `steps` on a buildah working container; removes the container if they fail (the final
/// `commit --rm` removes it otherwise).
fn with_container(container: &str, steps: impl FnOnce() -> Result<()>) -> Result<()> {
    let result = steps();
    if result.is_err() {
        let _ = Command::new("buildah").args(["rm", container]).output();
    }
    result
}

/// The image starts: the daemon finds its libraries, and so does `ip`.
fn smoke_test(reference: &str) -> Result<()> {
    let options = image::podman_run_options();
    for (entrypoint, arg, expect) in
        [(image::BINARY, "--version", "mirror-daemon"), ("/usr/bin/ip", "-V", "iproute2")]
    {
        let out = Command::new("podman")
            .args(["run", "--rm", "--pull=never", "--network=none"])
            .args(&options)
            .args(["--entrypoint", entrypoint, reference, arg])
            .output()
            .context("run podman")?;
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() || !text.contains(expect) {
            bail!("`{entrypoint} {arg}` in {reference} did not run: {text}");
        }
    }
    Ok(())
}

/// The ID of a local image, if it exists.
fn image_id(reference: &str) -> Option<String> {
    let out =
        Command::new("podman").args(["image", "inspect", "--format", "{{.Id}}", reference]).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs a buildah command that prints one value (a container name) and returns it.
fn buildah_output(cmd: &mut Command) -> Result<String> {
    eprintln!("+ {}", crate::util::describe(cmd));
    let out = cmd.output().context("run buildah")?;
    if !out.status.success() {
        bail!("{}: {}", crate::util::describe(cmd), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Prints the image's size, each layer's, and what a registry stores (gzip-compressed layers, as
/// `podman push` sends them).
fn print_summary(reference: &str) -> Result<()> {
    let out = Command::new("podman").args(["history", "--format", "json", reference]).output()?;
    if !out.status.success() {
        bail!("podman history {reference}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let history: serde_json::Value = serde_json::from_slice(&out.stdout).context("podman history's JSON")?;
    let layers = history.as_array().cloned().unwrap_or_default();
    let total: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();

    let oci = workspace_root().join("target/image/oci");
    let _ = std::fs::remove_dir_all(&oci);
    let pushed = Command::new("podman")
        .args(["push", "--quiet", reference])
        .arg(format!("oci:{}:{}", oci.display(), image::VERSION))
        .status()
        .is_ok_and(|s| s.success());
    let compressed = if pushed { compressed_layer_sizes(&oci) } else { Vec::new() };
    let _ = std::fs::remove_dir_all(&oci);

    println!("image {reference}: {} ({} bytes), {} layers", human(total), total, layers.len());
    // podman lists the newest layer first; the OCI manifest lists the base first.
    for (i, layer) in layers.iter().rev().enumerate() {
        let size = layer["size"].as_u64().unwrap_or(0);
        let created_by = layer["CreatedBy"].as_str().unwrap_or("");
        let gz = compressed.get(i).map(|s| format!(", {} compressed", human(*s))).unwrap_or_default();
        println!("  layer {}: {}{gz}  {created_by}", i + 1, human(size));
    }
    if !compressed.is_empty() {
        let sum: u64 = compressed.iter().sum();
        println!("  in a registry (gzip layers): {}", human(sum));
    }
    Ok(())
}

/// Layer blob sizes of the single image in an OCI layout directory, base first.
fn compressed_layer_sizes(oci: &Path) -> Vec<u64> {
    let read_json = |path: PathBuf| -> Option<serde_json::Value> {
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    };
    let blob = |digest: &str| oci.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let Some(index) = read_json(oci.join("index.json")) else { return Vec::new() };
    let Some(manifest) = index["manifests"][0]["digest"].as_str().and_then(|d| read_json(blob(d))) else {
        return Vec::new();
    };
    manifest["layers"]
        .as_array()
        .map(|layers| layers.iter().filter_map(|l| l["size"].as_u64()).collect())
        .unwrap_or_default()
}

fn human(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_deb822_sources_and_skips_disabled_ones() {
        let text = "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                    Types: deb-src\nURIs: http://mirror.invalid/debian\nSuites: bookworm\nComponents: main\n\n\
                    Enabled: no\nTypes: deb\nURIs: http://other.invalid\nSuites: bookworm\nComponents: main\n";
        let sources = parse_deb822(text);
        assert_eq!(
            sources,
            vec![Source {
                uris: vec!["http://mirror.invalid/debian".into()],
                suites: vec!["bookworm".into(), "bookworm-updates".into()],
                components: vec!["main".into()],
                signed_by: Some("/usr/share/keyrings/debian-archive-keyring.gpg".into()),
            }]
        );
    }

    #[test]
    fn reads_one_line_sources_with_options() {
        let text = "# deb http://commented.invalid bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bookworm main contrib\n\
                    deb-src http://mirror.invalid/debian bookworm main\n\
                    deb http://mirror.invalid/debian-security bookworm-security main\n";
        let sources = parse_one_line(text);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(sources[0].components, ["main", "contrib"]);
        assert_eq!(sources[1].suites, ["bookworm-security"]);
        assert_eq!(sources[1].signed_by, None);
    }
}
