// SPDX-License-Identifier: Apache-2.0
// Throw-away PKI for mutual-TLS tests, made with the openssl command line (a test dependency):
// a CA, a server certificate for 127.0.0.1/localhost, a client certificate from the same CA
// (CN=client, SANs DNS:ctl.example.net and URI:spiffe://example.net/ctl), a second one from the
// same CA (CN=intruder, no SAN: valid, but on no allow-list), and a client certificate from an
// unrelated CA.
#pragma once

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

namespace stallmon::server::testing {

struct TestCerts {
  std::string dir;
  std::string ca, server_cert, server_key, client_cert, client_key, rogue_cert, rogue_key, intruder_cert, intruder_key;
  std::string error;  // non-empty when generation failed

  static std::string read(const std::string& path) {
    std::ifstream in(path);
    std::ostringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Writes everything under `dir` (which must exist). ~1 s of openssl.
  static TestCerts make(const std::string& dir) {
    TestCerts c;
    c.dir = dir;
    c.ca = dir + "/ca.crt";
    c.server_cert = dir + "/server.crt";
    c.server_key = dir + "/server.key";
    c.client_cert = dir + "/client.crt";
    c.client_key = dir + "/client.key";
    c.rogue_cert = dir + "/rogue.crt";
    c.rogue_key = dir + "/rogue.key";
    c.intruder_cert = dir + "/intruder.crt";
    c.intruder_key = dir + "/intruder.key";
    std::string script =
        "set -e; cd '" + dir + "'; "
        "O='openssl'; "
        "$O req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
        "  -subj /CN=stallmon-test-ca -keyout ca.key -out ca.crt 2>/dev/null; "
        "$O req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
        "  -subj /CN=rogue-ca -keyout rogue-ca.key -out rogue-ca.crt 2>/dev/null; "
        "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > server.ext; "
        "printf 'extendedKeyUsage=clientAuth\\n' > intruder.ext; "
        "printf 'extendedKeyUsage=clientAuth\\nsubjectAltName=DNS:ctl.example.net,URI:spiffe://example.net/ctl\\n' "
        "  > client.ext; "
        "for n in server client rogue intruder; do "
        "  $O req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=$n "
        "    -keyout $n.key -out $n.csr 2>/dev/null; done; "
        "$O x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 "
        "  -extfile server.ext -out server.crt 2>/dev/null; "
        "$O x509 -req -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 "
        "  -extfile client.ext -out client.crt 2>/dev/null; "
        "$O x509 -req -in intruder.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 "
        "  -extfile intruder.ext -out intruder.crt 2>/dev/null; "
        "$O x509 -req -in rogue.csr -CA rogue-ca.crt -CAkey rogue-ca.key -CAcreateserial -days 2 "
        "  -extfile intruder.ext -out rogue.crt 2>/dev/null";
    // Through a file: no second layer of shell quoting.
    { std::ofstream(dir + "/make-certs.sh") << script << "\n"; }
    std::string cmd = "sh '" + dir + "/make-certs.sh'";
    if (std::system(cmd.c_str()) != 0) c.error = "openssl failed (is the openssl package installed?)";
    return c;
  }
};

}  // namespace stallmon::server::testing
