import ArgumentParser
import Foundation
import Logging
import WarrenAuth
import WarrenConfig
import WarrenJobs
import WarrenPostgres
import WarrenStore
import WarrenSupport

/// `producer tokens create|list|revoke`: API bearer tokens, stored hashed in Postgres.
struct TokensCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokens", abstract: "Manage API tokens.",
        subcommands: [Create.self, List.self, Revoke.self])

    static func withStore<T: Sendable>(_ body: (APITokenStore) async throws -> T) async throws -> T {
        do {
            return try await PostgresPool.withMigrated(applicationName: "warren-tokens") { try await body(APITokenStore(pool: $0)) }
        } catch let error as SettingsError {
            throw ValidationError("\(error)")
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a token; prints it once.")

        @Option(help: "Tenant the token acts for.") var tenant: String
        @Option(help: "Tier of the tenant's jobs: enterprise, premium or free.") var tier: String
        @Option(help: "Comma-separated scopes: \(Scope.allCases.map(\.rawValue).joined(separator: ", ")).") var scopes: String
        @Option(help: "Days until it expires (default: never).") var expiresInDays: Int?

        /// Argument checks live here, before anything is opened: a `ValidationError` thrown
        /// from `run()` is printed with the root command's usage, not this one's.
        func validate() throws {
            _ = try parsedTier()
            _ = try parsedScopes()
            guard !tenant.isEmpty, tenant.count <= 255 else { throw ValidationError("--tenant must be 1 to 255 characters") }
            if let days = expiresInDays, !(1...36_500).contains(days) {
                throw ValidationError("--expires-in-days must be from 1 to 36500")
            }
        }

        private func parsedTier() throws -> Tier {
            do { return try Tier.parse(tier) } catch { throw ValidationError("--tier: \(error.message)") }
        }

        private func parsedScopes() throws -> Set<Scope> {
            var parsed = Set<Scope>()
            for name in scopes.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) {
                guard let scope = Scope(rawValue: name) else {
                    throw ValidationError("--scopes: unknown scope '\(name)' (known: \(Scope.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                parsed.insert(scope)
            }
            guard !parsed.isEmpty else { throw ValidationError("--scopes: give at least one scope") }
            return parsed
        }

        func run() async throws {
            let parsedTier = try parsedTier()
            let parsed = try parsedScopes()
            let expiresAt = expiresInDays.map { Timestamp(microseconds: Timestamp.now().microseconds + Int64($0) * 86_400_000_000) }
            let (record, token) = try await TokensCommand.withStore { store in
                try await store.create(tenant: tenant, tier: parsedTier, scopes: parsed, expiresAt: expiresAt)
            }
            FileHandle.standardError.write(Data("created token \(record.prefix)… (id \(record.id.lowercasedString)) for \(tenant), tier \(parsedTier.rawValue); it is shown only now:\n".utf8))
            print(token)
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List tokens (never their secrets).")

        func run() async throws {
            let tokens = try await TokensCommand.withStore { try await $0.list() }
            print("id\tprefix\ttenant\ttier\tscopes\tcreated_at\texpires_at\trevoked_at")
            for token in tokens {
                print([token.id.lowercasedString, token.prefix, token.tenant, token.tier.rawValue,
                       token.scopes.map(\.rawValue).sorted().joined(separator: ","), token.createdAt.iso8601,
                       token.expiresAt?.iso8601 ?? "-", token.revokedAt?.iso8601 ?? "-"].joined(separator: "\t"))
            }
        }
    }

    struct Revoke: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Revoke a token by id or prefix.")

        @Argument(help: "The token's id or prefix (see `tokens list`).") var token: String

        func run() async throws {
            let count = try await TokensCommand.withStore { try await $0.revoke(token) }
            guard count > 0 else {
                FileHandle.standardError.write(Data("no active token with id or prefix '\(token)'\n".utf8))
                throw ExitCode(1)
            }
            print("revoked \(count) token(s)")
        }
    }
}
