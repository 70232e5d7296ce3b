#!/usr/bin/env bash
# Build the three images (operator, sandbox, trainer) from images/*/Dockerfile without a container engine: buildah
# (Debian's package) with its own storage, chroot isolation, and the Dockerfiles' base stood in by a Debian root
# filesystem under the official name (scripts/images/standin-base.sh), so the Dockerfiles build unchanged.
#
#   bash scripts/build-images.sh [NAME...]          (as root, from anywhere; default: all three)
#
# Writes build/images/NAME.oci.tar (an OCI archive, gzip layers, its one image named localhost/sigma0/NAME:VERSION)
# and build/images/images.json, one object per image:
#   {name, ref: localhost/sigma0/NAME:VERSION, contentRef: localhost/sigma0/NAME:CONTENTKEY,
#    archive: build/images/NAME.oci.tar, manifestDigest: sha256:..., contentKey}
# The content key hashes everything the build reads: the Dockerfile and its .dockerignore, images/constraints.txt,
# pyproject.toml, README.md, operator/, crds/ and the stand-in's script (scripts/images/). An image whose key is unchanged and
# whose archive exists is not rebuilt.
#
# Python packages: PyPI's files are downloaded once on the host (pip download, exactly images/constraints.txt, for
# CPython 3.11 on linux x86_64) into the cache, and each build mounts them at /mnt with a pip configuration
# (/etc/pip.conf: no index, find-links /mnt) for its RUN steps only. A `docker build` of the same Dockerfile,
# with no such mount, installs the same pins from PyPI. Both mount points exist in the base (/mnt in Debian's
# layout, /etc/pip.conf empty in the stand-in), so no trace of them is left in an image's layers.
#
# Caches, under ${XDG_CACHE_HOME:-~/.cache}/sigma0/images: storage/ and runroot/ (buildah's), base/ (the stand-in's
# root filesystem), wheels/<key>/ (by constraints.txt's content).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

if [ "$(id -u)" != 0 ]; then
  echo "build-images: buildah needs root here (chroot isolation, its own storage); run as root" >&2
  exit 1
fi
for tool in buildah mmdebstrap; do
  if ! command -v "$tool" >/dev/null; then
    echo "build-images: $tool is missing: run scripts/setup.sh as root (it installs buildah umoci skopeo mmdebstrap)" >&2
    exit 1
  fi
done

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(operator sandbox trainer)
for name in "${names[@]}"; do
  [ -f "images/$name/Dockerfile" ] || { echo "build-images: no images/$name/Dockerfile" >&2; exit 1; }
done

cache=${XDG_CACHE_HOME:-$HOME/.cache}/sigma0/images
out=build/images
mkdir -p "$cache" "$out"
bah=(buildah --root "$cache/storage" --runroot "$cache/runroot" --storage-driver "${SIGMA0_IMAGES_DRIVER:-overlay}")
python=${SIGMA0_PYTHON:-python3}  # 3.11+ (tomllib) with pip: the project's venv where there is one
if [ -z "${SIGMA0_PYTHON:-}" ] && [ -x .venv/bin/python ]; then python=.venv/bin/python; fi
version=$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')

# One build at a time on this storage.
exec 9>"$cache/lock"
flock 9

# sha256 over path and content of each file the build of NAME reads (links by their target; git's view of the tree:
# tracked and untracked files, not ignored ones).
content_key() {
  local name=$1
  git -C "$repo" ls-files -z --cached --others --exclude-standard -- \
      "images/$name/Dockerfile" "images/$name/Dockerfile.dockerignore" images/constraints.txt pyproject.toml \
      README.md operator crds scripts/images |
    sort -z -u |
    while IFS= read -r -d '' f; do
      [ -e "$f" ] || [ -L "$f" ] || continue
      if [ -L "$f" ]; then
        printf '%s link %s\n' "$f" "$(readlink "$f")"
      else
        printf '%s %s\n' "$f" "$(sha256sum < "$f" | cut -c1-64)"
      fi
    done | sha256sum | cut -c1-16
}

declare -A keys
todo=()
for name in "${names[@]}"; do
  keys[$name]=$(content_key "$name")
  if [ -s "$out/$name.oci.tar" ] && [ -s "$out/$name.json" ] &&
     grep -q "\"contentKey\": \"${keys[$name]}\"" "$out/$name.json"; then
    echo "build-images: $name is up to date (content ${keys[$name]})"
  else
    todo+=("$name")
  fi
done

if [ ${#todo[@]} -gt 0 ]; then
  # The wheels, once per constraints.txt: every pin, for the images' interpreter and platform. A new folder starts
  # as hard links to the newest earlier one, so pip downloads only the pins that changed.
  wheels=$cache/wheels/$( (cat images/constraints.txt; echo cp311-linux-x86_64) | sha256sum | cut -c1-16)
  if [ ! -d "$wheels" ]; then
    start=$SECONDS
    rm -rf "$wheels.partial"
    mkdir -p "$wheels.partial"
    previous=$(find "$cache/wheels" -mindepth 1 -maxdepth 1 -type d ! -name '*.partial' -printf '%T@ %p\n' |
      sort -n | tail -1 | cut -d' ' -f2-)
    if [ -n "$previous" ]; then cp -al "$previous/." "$wheels.partial/"; fi
    platforms=(--platform manylinux2014_x86_64 --platform linux_x86_64)
    for minor in $(seq 17 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done  # bookworm: glibc 2.36
    "$python" -m pip download --quiet --no-deps --dest "$wheels.partial" --requirement images/constraints.txt \
      --implementation cp --python-version 3.11 --abi cp311 --abi abi3 --abi none "${platforms[@]}"
    mv "$wheels.partial" "$wheels"
    find "$cache/wheels" -mindepth 1 -maxdepth 1 -type d ! -path "$wheels" -exec rm -rf {} +  # links keep the files
    echo "build-images: wheels in $((SECONDS - start)) s ($(du -sh "$wheels" | cut -f1))"
  fi
  bash scripts/images/standin-base.sh "$cache/storage" "$cache/runroot" "$cache/base"
  pipconf=$cache/pip.conf
  printf '[global]\nno-index = true\nfind-links = /mnt\n' > "$pipconf"
fi

# images.json: every image built here so far (one NAME.json per image, so building one image keeps the others).
write_index() {
  "$python" - "$out" > "$out/images.json.partial" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
images = [json.loads(p.read_text()) for p in sorted(out.glob("*.json")) if p.name != "images.json"]
print(json.dumps(images, indent=2))
EOF
  mv "$out/images.json.partial" "$out/images.json"
}

for name in "${todo[@]}"; do
  key=${keys[$name]}
  ref=localhost/sigma0/$name:$version
  content_ref=localhost/sigma0/$name:$key
  archive=$out/$name.oci.tar
  start=$SECONDS
  if "${bah[@]}" inspect --type image "$content_ref" >/dev/null 2>&1; then
    # built from the same content before (another checkout, or an archive since deleted): archive it again
    "${bah[@]}" tag "$content_ref" "$ref"
  else
    "${bah[@]}" bud --quiet --isolation chroot --pull=never --format oci \
      --file "images/$name/Dockerfile" --ignorefile "images/$name/Dockerfile.dockerignore" \
      --volume "$wheels:/mnt:ro" --volume "$pipconf:/etc/pip.conf:ro" \
      --tag "$ref" --tag "$content_ref" . >/dev/null
  fi
  built=$((SECONDS - start))
  rm -f "$archive" "$out/$name.json"
  "${bah[@]}" push --quiet --compression-format gzip --digestfile "$out/$name.digest" \
    "$content_ref" "oci-archive:$archive:$ref"
  # Older builds of this image go; layers shared with the current ones stay.
  "${bah[@]}" images --format '{{.Name}}:{{.Tag}}' | grep "^localhost/sigma0/$name:" |
    grep -v -x -e "$ref" -e "$content_ref" | xargs -r "${bah[@]}" rmi >/dev/null || true
  "$python" - "$name" "$ref" "$content_ref" "$archive" "$(cat "$out/$name.digest")" "$key" > "$out/$name.json" <<'EOF'
import json, sys
name, ref, content_ref, archive, digest, key = sys.argv[1:]
print(json.dumps({"name": name, "ref": ref, "contentRef": content_ref, "archive": archive,
                  "manifestDigest": digest, "contentKey": key}, indent=2))
EOF
  rm -f "$out/$name.digest"
  write_index
  echo "build-images: $name built in $built s, archived in $((SECONDS - start - built)) s" \
       "($(du -h "$archive" | cut -f1), $ref, content $key)"
done

write_index
