import Foundation
import ParleyCore
import ParleyStorePostgres
import PostgresTestSupport
import Testing

/// `sslmode` and `sslrootcert` in the database URL, against a PostgreSQL server of the test's own
/// that refuses connections without TLS.
@Suite("PostgreSQL over TLS")
struct PostgresTLSTests {
    @Test func theURLsTLSOptionsAreReadAsLibpqReadsThem() throws {
        #expect(try PostgresDatabaseURL(parsing: "postgresql://parley@db.example/chat").tlsMode == .prefer, "libpq's default")
        let strict = try PostgresDatabaseURL(parsing: "postgresql://parley@db.example/chat?sslmode=verify-full&sslrootcert=/etc/parley/ca.pem")
        #expect(strict.tlsMode == .verifyFull)
        #expect(strict.rootCertificateFile == "/etc/parley/ca.pem")
        #expect(strict.description == "postgresql://parley@db.example:5432/chat?sslmode=verify-full&sslrootcert=/etc/parley/ca.pem")
        for (text, complaint) in [
            ("postgresql://parley@db.example/chat?sslmode=sometimes", "is not one of disable, prefer, require, verify-ca, verify-full"),
            ("postgresql://parley@db.example/chat?connect_timeout=3", "the option \"connect_timeout\""),
            ("postgresql://parley@db.example/chat?sslmode=require&sslrootcert=/ca.pem", "only used with sslmode=verify-ca or verify-full"),
            ("postgresql://parley@10.0.0.5/chat?sslmode=verify-full", "not an address"),
            ("postgresql://parley@[fd00::5]/chat?sslmode=verify-full", "not an address"),
        ] {
            #expect { try PostgresDatabaseURL(parsing: text) } throws: { error in
                "\(error)".contains(complaint)
            }
        }
    }

    @Test func aServerThatRequiresTLSIsReachedOnlyWithIt() async throws {
        let postgres = try await DedicatedPostgres.make(tlsOnly: true)
        let certificate = try #require(postgres.certificateFile)
        let base = "postgresql://postgres@127.0.0.1:\(postgres.url.port)/postgres"
        let byName = "postgresql://postgres@localhost:\(postgres.url.port)/postgres"

        // Without TLS the server turns the connection away; its reason reaches the operator.
        await #expect { try await PostgresChatStore.open(url: try PostgresDatabaseURL(parsing: base + "?sslmode=disable")) } throws: { error in
            "\(error)".contains("no encryption")
        }
        // Encrypted, with or without checking who answers.
        for url in [base, base + "?sslmode=require", base + "?sslmode=verify-ca&sslrootcert=\(certificate)",
                    byName + "?sslmode=verify-full&sslrootcert=\(certificate)"] {
            let store = try await PostgresChatStore.open(url: try PostgresDatabaseURL(parsing: url))
            try await store.insertAccount(AccountRecord(
                name: "tls\(url.count)", key: "tls\(url.count)", credential: PasswordCredential(salt: [0], iterations: 1, storedKey: [1], serverKey: [2]),
                createdAt: Date(timeIntervalSince1970: 0)))
            #expect(try await store.loadAccounts().contains { $0.key == "tls\(url.count)" }, "\(url)")
            try await store.close()
        }
    }

    @Test func aCertificateFromAnotherAuthorityIsRefused() async throws {
        let postgres = try await DedicatedPostgres.make(tlsOnly: true)
        // Another server's self-signed certificate: valid, for localhost, but not this server's.
        let stranger = try await DedicatedPostgres.make(tlsOnly: true)
        let wrongRoot = try #require(stranger.certificateFile)
        for mode in ["verify-ca", "verify-full"] {
            let url = try PostgresDatabaseURL(parsing: "postgresql://postgres@localhost:\(postgres.url.port)/postgres?sslmode=\(mode)&sslrootcert=\(wrongRoot)")
            await #expect { try await PostgresChatStore.open(url: url) } throws: { error in
                guard case PostgresStoreError.unreachable(_, let reason) = error else { return false }
                return reason.lowercased().contains("certificate")
            }
        }
        // A missing root file is named.
        let missing = try PostgresDatabaseURL(parsing: "postgresql://postgres@localhost:\(postgres.url.port)/postgres?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem")
        await #expect { try await PostgresChatStore.open(url: missing) } throws: { error in
            "\(error)".contains("/nonexistent/ca.pem")
        }
    }
}
