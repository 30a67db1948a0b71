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
///
/// The value lives behind a pointer of its own: a reader borrows it in place, where a stored
/// property would be copied for the call (a retain and a release of everything it holds) and
/// checked for exclusive access at run time, on every hit.
final class ReadWriteLockedValue<Value>: @unchecked Sendable {
    private let lock = UnsafeMutablePointer<pthread_rwlock_t>.allocate(capacity: 1)
    private let value = UnsafeMutablePointer<Value>.allocate(capacity: 1)

    init(_ value: Value) {
        self.value.initialize(to: value)
        lock.initialize(to: pthread_rwlock_t())
        precondition(pthread_rwlock_init(lock, nil) == 0, "pthread_rwlock_init failed")
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
        value.deinitialize(count: 1)
        value.deallocate()
    }

    func withReadLock<T>(_ body: (Value) throws -> T) rethrows -> T {
        precondition(pthread_rwlock_rdlock(lock) == 0, "pthread_rwlock_rdlock failed")
        defer { pthread_rwlock_unlock(lock) }
        return try body(value.pointee)
    }

    /// As `withReadLock`, with the value's address: a reader that touches a few of its fields
    /// loads only those, where a value passed to `body` is loaded whole (a retain and a
    /// release of everything it holds). `body` must not keep the pointer.
    func withReadLockedPointer<T>(_ body: (UnsafePointer<Value>) throws -> T) rethrows -> T {
        precondition(pthread_rwlock_rdlock(lock) == 0, "pthread_rwlock_rdlock failed")
        defer { pthread_rwlock_unlock(lock) }
        return try body(UnsafePointer(value))
    }

    func withLockedValue<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        precondition(pthread_rwlock_wrlock(lock) == 0, "pthread_rwlock_wrlock failed")
        defer { pthread_rwlock_unlock(lock) }
        return try body(&value.pointee)
    }
}
