#!/usr/bin/env python3
"""Writes a small MaxMind DB file with known networks, for tests.

    make-mmdb.py asn OUT.mmdb 203.0.113.0/24=64500:EXAMPLE-NET 2001:db8::/32=64501:V6-NET ...
    make-mmdb.py country OUT.mmdb 203.0.113.0/24=DE 198.51.100.0/24=FR ...

The records have the shape of GeoLite2-ASN and GeoLite2-Country (the fields
ipstats reads): {"autonomous_system_number", "autonomous_system_organization"}
and {"country": {"iso_code"}}. IPv4 networks are also reachable as
IPv4-mapped IPv6 addresses, as in MaxMind's own files.
"""

import sys

from mmdb_writer import MMDBWriter, MmdbU32
from netaddr import IPSet


def main(argv):
    if len(argv) < 3 or argv[0] not in ("asn", "country"):
        sys.exit(__doc__)
    kind, out, entries = argv[0], argv[1], argv[2:]
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
