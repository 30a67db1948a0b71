#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A value behind a reader-writer lock: readers never wait for each other.
///
/// The list cache's state is read on every cache hit by every event loop; with a plain mutex
/// one loop's hit waits whenever the other holds the lock, and waits long if the holder was
/// preempted. Hits only read, so they share the lock; misses, stores and invalidations write.
final class ReadWriteLockedValue<Value>: @unchecked Sendable {
    private let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)
    private var value: Value

    init(_ value: Value) {
        self.value = value
        lock.initialize(to: pthread_rwlock_t())
        precondition(pthread_rwlock_init(lock, nil) == 0, "pthread_rwlock_init failed")
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    func withReadLock<T>(_ body: (Value) throws -> T) rethrows -> T {
        precondition(pthread_rwlock_rdlock(lock) == 0, "pthread_rwlock_rdlock failed")
        defer { pthread_rwlock_unlock(lock) }
        return try body(value)
    }

    func withLockedValue<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        precondition(pthread_rwlock_wrlock(lock) == 0, "pthread_rwlock_wrlock failed")
        defer { pthread_rwlock_unlock(lock) }
        return try body(&value)
    }
}
