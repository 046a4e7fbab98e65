// Each `uma <command>` lives in its own cmd_<name>.cpp and registers itself here at static-initialisation
// time, so adding a command touches no other file.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace uma::app {

struct Command {
  std::string name;
  std::string description;
  // Adds the command's options to `sub` and returns the action to run once arguments are parsed.
  // The action returns the process exit code.
  std::function<std::function<int()>(CLI::App& sub)> setup;
};

std::vector<Command>& commands();

struct RegisterCommand {
  explicit RegisterCommand(Command c) { commands().push_back(std::move(c)); }
};

}  // namespace uma::app
