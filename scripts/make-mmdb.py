#!/usr/bin/env python3
"""Writes a small MaxMind DB file with known networks, for tests.

    make-mmdb.py asn OUT.mmdb 203.0.113.0/24=64500:EXAMPLE-NET 2001:db8::/32=64501:V6-NET ...
    make-mmdb.py country OUT.mmdb 203.0.113.0/24=DE 198.51.100.0/24=FR ...
    make-mmdb.py asn|country OUT.mmdb --random N   (N random networks, /12 to /24 and
                                                    /32 to /48, for benchmarks)

The records have the shape of GeoLite2-ASN and GeoLite2-Country (the fields
ipstats reads): {"autonomous_system_number", "autonomous_system_organization"}
and {"country": {"iso_code"}}. IPv4 networks are also reachable as
IPv4-mapped IPv6 addresses, as in MaxMind's own files.
"""

import ipaddress
import random
import sys

from mmdb_writer import MMDBWriter, MmdbU32
from netaddr import IPSet


def random_entries(kind, n):
    """N networks spread over both families, the size of a real database's
    share of the address space, with as many owners as a real one has."""
    rng = random.Random(7)
    countries = ["US", "DE", "FR", "NL", "GB", "JP", "BR", "IN", "CN", "RU", "SG", "CA"]
    taken = set()
    entries = []
    while len(entries) < n:
        if rng.random() < 0.8:
            bits = rng.randint(12, 24)
            base = rng.getrandbits(32) >> (32 - bits) << (32 - bits)
            network = f"{ipaddress.IPv4Address(base)}/{bits}"
        else:
            bits = rng.randint(32, 48)
            base = (0x2000 << 112 | rng.getrandbits(125)) >> (128 - bits) << (128 - bits)
            network = f"{ipaddress.IPv6Address(base)}/{bits}"
        top = network.split("/")[0].rsplit(".", 2)[0] if "." in network else network[:9]
        if top in taken:
            continue
        taken.add(top)
        if kind == "asn":
            asn = rng.randint(1, 80000)
            entries.append(f"{network}={asn}:ORG-{asn}")
        else:
            entries.append(f"{network}={rng.choice(countries)}")
    return entries


def main(argv):
    if len(argv) < 3 or argv[0] not in ("asn", "country"):
        sys.exit(__doc__)
    kind, out, entries = argv[0], argv[1], argv[2:]
    if entries[0] == "--random":
        entries = random_entries(kind, int(entries[1]))
    db_type = "GeoLite2-ASN" if kind == "asn" else "GeoLite2-Country"
    writer = MMDBWriter(
        ip_version=6,
        database_type=db_type,
        languages=["en"],
        description={"en": f"ipstats test {kind} database"},
        ipv4_compatible=True,
    )
    for entry in entries:
        network, _, value = entry.partition("=")
        if kind == "asn":
            number, _, org = value.partition(":")
            record = {
                "autonomous_system_number": MmdbU32(int(number)),
                "autonomous_system_organization": org,
            }
        else:
            record = {"country": {"iso_code": value}}
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(out)


if __name__ == "__main__":
    main(sys.argv[1:])
