// `outpost`: the operator's command line (docs/bundles.md).
#include <iostream>

#include "cli/commands.h"

int main(int argc, char** argv) {
  return outpost::cli::RunOutpost(argc, argv, std::cout, std::cerr);
}
