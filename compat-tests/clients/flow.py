"""An application's flow with the Python ipfshttpclient, unmodified, against an API
multiaddr given as the first argument: add, pin add, pin ls, pin rm, pin ls."""
import sys
import time
import warnings

import ipfshttpclient

warnings.simplefilter("ignore")  # 0.8 only warns about daemon versions it does not know


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


with ipfshttpclient.connect(sys.argv[1]) as client:
    added = client.add_bytes(f"ipfshttpclient flow {time.time()}\n".encode())
    pinned = client.pin.add(added)
    if pinned["Pins"] != [added]:
        fail(f"pin.add returned {pinned}")
    if added not in client.pin.ls(type="recursive")["Keys"]:
        fail("pinned CID not listed")
    if client.pin.ls(added)["Keys"][added]["Type"] != "recursive":
        fail("pin.ls by path")
    removed = client.pin.rm(added)
    if removed["Pins"] != [added]:
        fail(f"pin.rm returned {removed}")
    if added in client.pin.ls(type="recursive")["Keys"]:
        fail("unpinned CID still listed")
    try:
        client.pin.rm(added)
        fail("a second pin.rm succeeded")
    except ipfshttpclient.exceptions.ErrorResponse as e:
        if "not pinned" not in str(e):
            fail(f"second pin.rm: {e}")
    print(f"ok {added}")
