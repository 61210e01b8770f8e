# SQLite for the persistent finding store (agent/store); Debian libsqlite3-dev.
find_package(SQLite3 3.31 REQUIRED)  # SQLITE_OPEN_NOFOLLOW
add_library(stallmon_sqlite INTERFACE)
target_link_libraries(stallmon_sqlite INTERFACE SQLite::SQLite3)
add_library(stallmon::sqlite ALIAS stallmon_sqlite)
