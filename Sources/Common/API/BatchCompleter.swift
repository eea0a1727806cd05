import Logging
import ServiceLifecycle
import WarrenJobs
import WarrenStore
import WarrenSupport

/// Runs beside the HTTP server: every `interval`, marks complete the batches whose jobs are
/// all terminal and publishes each one's on_complete job (claimed in Postgres with its outbox
/// entry first, so with several producers each batch's job is published once; one never
/// confirmed is published again by the scheduler's leader, same id, once its lease ends).
package struct BatchCompleter: Service {
    let store: APIBatchStore
    let publisher: JobPublisher
    let interval: Duration
    let logger: Logger

    package init(store: APIBatchStore, publisher: JobPublisher, interval: Duration, logger: Logger) {
        self.store = store
        self.publisher = publisher
        self.interval = interval
        self.logger = logger
    }

    package func run() async throws {
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
            due = try await store.claimCompleted()
        } catch {
            logger.debug("cannot look for completed batches", metadata: ["error": "\(error)"])
            return
        }
        guard !due.isEmpty else { return }
        let results = await Outbox(pool: store.pool).publish(due.map(\.job), with: publisher)
        for (completion, result) in zip(due, results) {
            switch result {
            case .success:
                logger.info("batch complete; on_complete job published", metadata: [
                    "batch_id": "\(completion.batchID.lowercasedString)", "job_id": "\(completion.job.id.lowercasedString)",
                    "job_type": "\(completion.job.type)",
                ])
            case .failure(let error):
                logger.warning("on_complete job not confirmed; the outbox publishes it again under its id",
                               metadata: ["batch_id": "\(completion.batchID.lowercasedString)", "error": "\(error)"])
            }
        }
    }
}
