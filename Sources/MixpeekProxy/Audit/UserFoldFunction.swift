import GRDB
import MixpeekAPI

extension DatabaseFunction {
    /// `mixpeek_fold_user(text)`: `UserIdentity.folded` in SQL, for finding every spelling of
    /// a user in the cache and audit files.
    static func foldUser() -> DatabaseFunction {
        DatabaseFunction("mixpeek_fold_user", argumentCount: 1, pure: true) { values in
            String.fromDatabaseValue(values[0]).map(UserIdentity.folded)
        }
    }
}
