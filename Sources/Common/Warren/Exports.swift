// `import Warren` is all a user writes: the handler API (`JobHandler`, `TypedJobHandler`,
// `JobContext`, `JobOutcome`, `HandlerRegistry`, `PermanentJobFailure`, `Tier`, `JobError`)
// lives in WarrenJobs, below the worker engine, and is re-exported here. Only its `public`
// symbols cross; the rest of WarrenJobs is `package`.
@_exported import WarrenJobs
