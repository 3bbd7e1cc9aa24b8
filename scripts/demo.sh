#!/usr/bin/env bash
# A tour of rafs on a small example: build a tree, tar it, turn the tar into a Nydus layer,
# look inside it, check it, export it as a kernel EROFS image and (as root, when the kernel
# has EROFS) mount that image and compare it with the source tree; then stack a second layer
# (a whiteout, a change) on it with `merge`, mount the merged image, and unpack it to a tar;
# finally the main job: an OCI image of both layers through a content store (`rafs cache
# import`, BuildKit's MergeNydus), and `rafs convert` of the whole image, mounted again.
# Everything is written to ./demo-out, which is recreated on each run.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
rafs="$repo/.venv/bin/rafs"
out="$repo/demo-out"
mnt="$out/mnt"

step() { printf '\n==> %s\n' "$*"; }
run() { printf '+ %s\n' "$*"; "$@"; }

cleanup() {
    if mountpoint -q "$mnt" 2>/dev/null; then
        umount "$mnt"
    fi
}
trap cleanup EXIT

cleanup
rm -rf "$out"
mkdir -p "$out/src/docs"
cd "$out"

step "Making a small source tree in $out/src"
printf 'Hello from a Nydus layer!\n' > src/hello.txt
printf 'A file in a subdirectory.\n' > src/docs/readme.txt
"$repo/.venv/bin/python" -c '
import sys
line = b"rafs demo: the same line again and again, so chunks compress well\n"
size = 3 * 1024 * 1024
sys.stdout.buffer.write((line * (size // len(line) + 1))[:size])
' > src/big.bin
ln -s hello.txt src/link-to-hello
ln src/hello.txt src/docs/hardlink-to-hello
run ls -lR src

step "Packing it with GNU tar"
run tar --numeric-owner --format=pax -C src -cf example.tar .
run tar -tvf example.tar

step "Creating a Nydus layer from the tar"
run "$rafs" create example.tar -o layer.nydus

step "Inspecting the layer"
run "$rafs" inspect layer.nydus

step "Listing every entry"
run "$rafs" ls layer.nydus / -l -R

step "Reading one file back"
run "$rafs" cat layer.nydus /hello.txt

step "Checking structure and every chunk digest"
run "$rafs" check layer.nydus

step "Exporting a block image the kernel can mount"
run "$rafs" export --block layer.nydus -o image.erofs

if [ "$(id -u)" -ne 0 ] || ! grep -qw erofs /proc/filesystems; then
    step "Skipping the kernel mount: it needs root and EROFS in /proc/filesystems"
    exit 0
fi

step "Mounting the image with the kernel's EROFS driver"
mkdir -p "$mnt"
run mount -t erofs -o loop,ro image.erofs "$mnt"
run ls -lR "$mnt"

step "Comparing the mounted image with the source tree"
run diff -r --no-dereference src "$mnt"
echo "identical"

step "Unmounting"
run umount "$mnt"

step "A second layer: deletes docs/readme.txt (OCI whiteout) and changes hello.txt"
mkdir -p upper/docs
printf 'Hello from the upper layer!\n' > upper/hello.txt
: > upper/docs/.wh.readme.txt
run tar --numeric-owner --format=pax -C upper -cf upper.tar .
mkdir -p blobs
lower_digest=$("$rafs" create example.tar -o layer.nydus)
upper_digest=$("$rafs" create upper.tar -o upper.nydus)
cp layer.nydus "blobs/${lower_digest#sha256:}"
cp upper.nydus "blobs/${upper_digest#sha256:}"
run ls blobs

step "Merging the two layers into one image bootstrap (blobs named by layer digest)"
run "$rafs" merge "blobs/${lower_digest#sha256:}" "blobs/${upper_digest#sha256:}" -o merged.boot
run "$rafs" ls merged.boot / -l -R

step "Mounting the merged image"
run "$rafs" export --block merged.boot --blob-dir blobs -o merged.erofs
run mount -t erofs -o loop,ro merged.erofs "$mnt"
run ls -lR "$mnt"
run cat "$mnt/hello.txt"
run umount "$mnt"

step "Unpacking the merged image back to an OCI tar"
run "$rafs" unpack merged.boot --blob-dir blobs -o merged.tar
run tar -tvf merged.tar

step "The main job. First an OCI image of the same two tars, built by umoci"
run umoci init --layout oci-image
run umoci new --image oci-image:v1
run umoci raw add-layer --no-history --image oci-image:v1 example.tar
run umoci raw add-layer --no-history --image oci-image:v1 upper.tar

step "Its layers into a content store (containerd's layout) as a chain of layer refs"
printf '+ %s\n' "$rafs cache import oci:oci-image:v1 --store store"
ref=$("$rafs" cache import oci:oci-image:v1 --store store)
echo "top ref: $ref"

step "MergeNydus: each layer converted to Nydus once (a compression variant), then merged"
run "$rafs" cache merge-nydus "$ref" --store store
run "$rafs" content --store store ls

step "rafs convert: the whole image, OCI layout -> Nydus image (reusing those conversions)"
run "$rafs" convert oci:oci-image:v1 oci:nydus-image:v1 --store store
run "$rafs" inspect oci:nydus-image:v1

step "Mounting the Nydus image with the kernel (its bootstrap layer, blobs beside it)"
run "$rafs" export --block oci:nydus-image:v1 -o nydus.erofs
run mount -t erofs -o loop,ro nydus.erofs "$mnt"
run ls -lR "$mnt"
run cat "$mnt/hello.txt"
run umount "$mnt"

if [ -e /dev/fuse ]; then
    step "Mounting it lazily with FUSE: chunks are read (and cached) only when files are"
    run "$rafs" mount oci:nydus-image:v1 "$mnt" --cache-dir chunk-cache --stats mount-stats.json
    run cat "$mnt/hello.txt"
    run "$rafs" umount "$mnt"
    run cat mount-stats.json
    echo
else
    step "Skipping the FUSE mount: /dev/fuse is missing"
fi
echo "done: everything is in $out"
