"""The Arvados Python SDK's KeepClient against a Keep service, for checking the test cluster (and cafs's blocks in
it) with Arvados's own client. ARVADOS_API_HOST, ARVADOS_API_TOKEN and ARVADOS_API_HOST_INSECURE come from the
environment, as for any Arvados tool. Prints one JSON document on stdout.

  put-get PROXY_URL|- SEED
                       put 3 blocks (through the proxy, or through the keepstores the API lists when "-") with 2
                       copies each; read each back; try reads that Keep must refuse. Prints what happened.
  get LOCATOR FILE     read the block LOCATOR (signed) and write its bytes to FILE
  create MANIFEST      ask the API to save the manifest text in file MANIFEST as a new collection; print the
                       HTTP status it answered (200, or its refusal)
  read MANIFEST OUTDIR read the collection whose (signed) manifest text is in file MANIFEST from Keep, through
                       the services the API lists, and write its tree under OUTDIR; print its PDH
"""
import json
import os
import sys

import arvados
import arvados.collection
import arvados.errors
import arvados.keep

# The oracle beside this script (Python puts a script's directory first on its path).
from oracle import copy_out


def client(proxy):
    if proxy == "-":
        api = arvados.api("v1")
        return arvados.keep.KeepClient(api_client=api, num_retries=0)
    return arvados.keep.KeepClient(proxy=proxy, api_token=os.environ["ARVADOS_API_TOKEN"], num_retries=0)


def refused(kc, locator):
    """The error Keep gave for a read it must refuse, or None if it served the block."""
    try:
        kc.get(locator, num_retries=0)
    except arvados.errors.KeepReadError as e:
        return type(e).__name__
    return None


def put_get(proxy, seed):
    kc = client(proxy)
    out = {"blocks": []}
    for i, size in enumerate([0, 1000, 3 << 20]):
        data = bytes((j * 7 + i + seed) % 251 for j in range(size))
        signed = kc.put(data, copies=2)
        got = kc.get(signed, num_retries=0)
        out["blocks"].append({"signed": signed, "read_back": got == data})
    # A fresh client, so nothing comes from its block cache.
    kc = client(proxy)
    big = out["blocks"][2]["signed"]
    stripped = big.split("+A")[0]
    sig_at = big.index("+A") + 2
    forged = big[:sig_at] + ("0" if big[sig_at] != "0" else "1") + big[sig_at + 1:]
    out["unsigned_read"] = refused(kc, stripped)
    out["forged_read"] = refused(kc, forged)
    return out


def read(manifest_file, out):
    with open(manifest_file, encoding="utf-8") as f:
        text = f.read()
    api = arvados.api("v1")
    kc = arvados.keep.KeepClient(api_client=api, num_retries=0)
    r = arvados.collection.CollectionReader(text, api_client=api, keep_client=kc)
    copy_out(r, out)
    return {"pdh": r.portable_data_hash()}


def create(manifest_file):
    with open(manifest_file, encoding="utf-8") as f:
        text = f.read()
    api = arvados.api("v1")
    try:
        r = api.collections().create(body={"manifest_text": text}).execute(num_retries=0)
    except arvados.errors.ApiError as e:
        return {"status": e.resp.status}
    return {"status": 200, "portable_data_hash": r["portable_data_hash"], "uuid": r["uuid"]}


def main():
    cmd = sys.argv[1]
    if cmd == "put-get":
        print(json.dumps(put_get(sys.argv[2], int(sys.argv[3]))))
    elif cmd == "get":
        data = client("-").get(sys.argv[2], num_retries=0)
        with open(sys.argv[3], "wb") as f:
            f.write(data)
        print(json.dumps({"bytes": len(data)}))
    elif cmd == "create":
        print(json.dumps(create(sys.argv[2])))
    elif cmd == "read":
        print(json.dumps(read(sys.argv[2], sys.argv[3])))
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
