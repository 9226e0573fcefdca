"""A valid fleet as text, for tests to break one field at a time."""

VALID = """\
workers:
  - name: fra-1
    public_key: "DLc1tACgDb/MvA/rVSiiYn85E3jLXHBZ8X1e3wyKyS8="
    endpoint: "fra-1.example.net:51820"
    tunnel_address: 10.66.0.1
    exporter: "fra-1.example.net:9586"
    capacity: 200
    region: eu
  - name: ams-1
    public_key: "AAuDOFbV/XMAFZdoubTZ12XJqVqessO6qhzqp0QB3ms="
    endpoint: "[2001:db8::1]:51820"
    tunnel_address: 10.66.0.2
    exporter: "[2001:db8::1]:9586"
clients:
  - name: alice-laptop
    public_key: "9DyEKmVoQ1sUfgoBXzhONr0RB6MkVAfGUj9Ajr8WgVM="
    address: 10.66.1.2/32
    routes: [0.0.0.0/0]
    workers: [fra-1, ams-1]
    token_sha256: "5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
  - name: bob-phone
    public_key: "awnmaaaZPX6sbuDcKO8rijDTEKkWx+s/jjnh8lGUHmU="
    address: 10.66.1.3/32
    routes: [10.99.0.0/24, "fd00:99::/64"]
responder:
  url: "http://master.example.net:8080"
  hold_down_seconds: 60
  preempt: false
"""
