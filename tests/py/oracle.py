"""The Arvados Python SDK as an independent oracle for cafs's manifest codec and block layout.

Runs offline: blocks live in a KeepClient local_store directory (flat files named by MD5). Every command reads
its arguments from argv and prints one JSON document on stdout.

  write KEEPDIR SRCDIR        store every file and directory under SRCDIR as a new collection; print its
                              normalized manifest text and portable data hash
  read KEEPDIR MANIFEST OUTDIR
                              read the collection named by the manifest text in file MANIFEST, write its tree
                              under OUTDIR; print the SDK's normalized text and PDH of it
  normalize MANIFESTS_JSON    for each manifest text in the JSON list, print the SDK's normalized text and PDH
"""
import json
import os
import sys

import arvados.collection
import arvados.keep


def keep(dirname):
    return arvados.keep.KeepClient(local_store=os.path.abspath(dirname), num_prefetch_threads=0)


def write(keepdir, src):
    kc = keep(keepdir)
    c = arvados.collection.Collection(keep_client=kc, replication_desired=1)
    for root, dirs, files in os.walk(src):
        dirs.sort()
        rel = os.path.relpath(root, src)
        if rel != "." and not dirs and not files:
            c.mkdirs(rel)
        for name in sorted(files):
            path = name if rel == "." else os.path.join(rel, name)
            with open(os.path.join(root, name), "rb") as inp, c.open(path, "wb") as out:
                while True:
                    chunk = inp.read(8 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
    text = c.manifest_text(normalize=True)
    return {"manifest": text, "pdh": c.portable_data_hash()}


def copy_out(coll, out):
    """Writes every file and directory of the collection `coll` under the directory `out`."""

    def walk(coll, prefix):
        for name in sorted(coll.keys()):
            item = coll[name]
            path = os.path.join(prefix, name)
            if isinstance(item, arvados.collection.RichCollectionBase):
                os.makedirs(path, exist_ok=True)
                walk(item, path)
            else:
                with item.parent.open(name, "rb") as f, open(path, "wb") as o:
                    while True:
                        chunk = f.read(8 << 20)
                        if not chunk:
                            break
                        o.write(chunk)

    os.makedirs(out, exist_ok=True)
    walk(coll, out)


def read(keepdir, manifest_file, out):
    with open(manifest_file, encoding="utf-8") as f:
        text = f.read()
    r = arvados.collection.CollectionReader(text, keep_client=keep(keepdir), replication_desired=1)
    copy_out(r, out)
    return {"manifest": r.manifest_text(normalize=True), "pdh": r.portable_data_hash()}


def normalize(manifests_json):
    with open(manifests_json, encoding="utf-8") as f:
        texts = json.load(f)
    out = []
    for text in texts:
        r = arvados.collection.CollectionReader(text, keep_client=keep("/nonexistent"), replication_desired=1)
        out.append({"manifest": r.manifest_text(normalize=True), "pdh": r.portable_data_hash()})
    return out


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    result = {"write": write, "read": read, "normalize": normalize}[cmd](*args)
    json.dump(result, sys.stdout)
