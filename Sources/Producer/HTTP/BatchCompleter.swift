import Common
import Logging
import ServiceLifecycle

/// Runs beside the HTTP server: every `interval`, marks complete the batches whose jobs are
/// all terminal and publishes each one's on_complete job (claimed in Postgres first, so with
/// several producers each batch's job is published once; a claim never confirmed is published
/// again, with the same id, after 30 s).
struct BatchCompleter: Service {
    let store: APIBatchStore
    let publisher: JobPublisher
    let interval: Duration
    let logger: Logger

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                await sweep()
                try? await Task.sleep(for: interval)
            }
        }
    }

    func sweep() async {
        let due: [APIBatchStore.Completion]
        do {
            due = try await store.claimCompleted() + store.unpublishedCompletions(olderThanSeconds: 30)
        } catch {
            logger.debug("cannot look for completed batches", metadata: ["error": "\(error)"])
            return
        }
        for completion in due {
            do {
                try await publisher.publish(completion.job)
                try await store.markPublished(completion)
                logger.info("batch complete; on_complete job published", metadata: [
                    "batch_id": "\(completion.batchID.lowercasedString)", "job_id": "\(completion.job.id.lowercasedString)",
                    "job_type": "\(completion.job.type)",
                ])
            } catch {
                logger.warning("on_complete job not confirmed; publishing it again later",
                               metadata: ["batch_id": "\(completion.batchID.lowercasedString)", "error": "\(error)"])
            }
        }
    }
}
