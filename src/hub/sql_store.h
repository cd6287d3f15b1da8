// Internal to src/hub: the Store written once in SQL over sql::Database, so
// both backends run the same statements (sql.h says which SQL both accept).
#pragma once

#include <memory>

#include "hub/sql.h"
#include "hub/store.h"

namespace outpost::hub {

// Takes a migrated database.
std::unique_ptr<Store> NewSqlStore(std::unique_ptr<sql::Database> db);

}  // namespace outpost::hub
