// uma: run large language models locally. Commands register themselves (see command.h).
#include <cstdio>
#include <map>

#include "uma/command.h"
#include "uma/error.h"

namespace uma::app {
std::vector<Command>& commands() {
  static std::vector<Command> all;
  return all;
}
}  // namespace uma::app

int main(int argc, char** argv) {
  CLI::App app{"uma: run large language models locally, planned to fit your memory"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "uma 0.1.0");
  std::map<CLI::App*, std::function<int()>> actions;
  for (auto& c : uma::app::commands()) {
    CLI::App* sub = app.add_subcommand(c.name, c.description);
    actions[sub] = c.setup(*sub);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& [sub, action] : actions)
      if (sub->parsed()) return action();
  } catch (const uma::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
