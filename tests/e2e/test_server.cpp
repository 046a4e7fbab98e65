// `uma serve` end to end: starts the built binary on free loopback ports and runs the node scripts in
// tests/server (the official openai client, the load test, the web page in Chromium). Needs node and
// `npm ci --prefix tests/server`; the browser test also needs /usr/bin/chromium (apt-get install chromium).
#include <arpa/inet.h>
#include <curl/curl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "test_support.h"

extern char** environ;

namespace uma {
namespace {

namespace fs = std::filesystem;

fs::path server_tests() { return fs::path(UMA_SOURCE_DIR) / "tests" / "server"; }

int free_port() {
  const int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t n = sizeof a;
  ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &n);
  ::close(s);
  return ntohs(a.sin_port);
}

bool http_ok(const std::string& url) {
  CURL* c = curl_easy_init();
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 1000L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, +[](char*, size_t size, size_t n, void*) { return size * n; });
  long status = 0;
  const bool ok = curl_easy_perform(c) == CURLE_OK &&
                  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status) == CURLE_OK && status == 200;
  curl_easy_cleanup(c);
  return ok;
}

// A PNG character card: signature, IHDR (1x1 grey), tEXt "chara" with base64 JSON, IEND; CRCs included.
std::vector<uint8_t> png_card(const std::string& json) {
  auto crc = [](const std::string& bytes) {
    uint32_t c = 0xFFFFFFFFu;
    for (unsigned char b : bytes) {
      c ^= b;
      for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return c ^ 0xFFFFFFFFu;
  };
  static const char* kB64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string b64;
  for (size_t i = 0; i < json.size(); i += 3) {
    uint32_t v = static_cast<unsigned char>(json[i]) << 16;
    if (i + 1 < json.size()) v |= static_cast<unsigned char>(json[i + 1]) << 8;
    if (i + 2 < json.size()) v |= static_cast<unsigned char>(json[i + 2]);
    b64 += kB64[v >> 18 & 63];
    b64 += kB64[v >> 12 & 63];
    b64 += i + 1 < json.size() ? kB64[v >> 6 & 63] : '=';
    b64 += i + 2 < json.size() ? kB64[v & 63] : '=';
  }
  std::string out("\x89PNG\r\n\x1a\n", 8);
  auto chunk = [&](const std::string& type, const std::string& data) {
    for (int s = 24; s >= 0; s -= 8) out += static_cast<char>(data.size() >> s & 0xFF);
    const uint32_t c = crc(type + data);
    out += type + data;
    for (int s = 24; s >= 0; s -= 8) out += static_cast<char>(c >> s & 0xFF);
  };
  chunk("IHDR", std::string("\0\0\0\1\0\0\0\1\x08\0\0\0\0", 13));
  chunk("tEXt", std::string("chara") + '\0' + b64);
  chunk("IEND", "");
  return {out.begin(), out.end()};
}

// A directory with the JSON card of tests/server/characters and a PNG card made here.
fs::path characters_dir() {
  const fs::path dir = test::temp_dir() / "characters";
  fs::create_directories(dir);
  fs::copy_file(server_tests() / "characters" / "lily.json", dir / "lily.json", fs::copy_options::overwrite_existing);
  const std::string tom = R"({"spec":"chara_card_v2","spec_version":"2.0","data":{"name":"Tom","description":"{{char}} is a boy with a big dog.","personality":"brave","scenario":"","first_mes":"Hello {{user}}, meet my dog!","mes_example":"","system_prompt":"","post_history_instructions":""}})";
  const auto png = png_card(tom);
  std::ofstream(dir / "tom.png", std::ios::binary).write(reinterpret_cast<const char*>(png.data()), png.size());
  return dir;
}

// `uma serve` as a child process; stopped with SIGTERM, which must end it cleanly.
class ServerProcess {
 public:
  ServerProcess(const fs::path& model, std::vector<std::string> extra) : port_(free_port()) {
    std::vector<std::string> args = {test::uma_binary().string(), "serve", "-m", model.string(), "--port",
                                     std::to_string(port_)};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ) != 0) pid_ = -1;
    for (int i = 0; i < 300 && pid_ > 0 && !http_ok(url() + "/health"); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ~ServerProcess() { stop(); }
  int stop() {
    if (pid_ <= 0) return status_;
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, &status_, 0);
    pid_ = -1;
    return status_;
  }
  bool up() { return pid_ > 0 && http_ok(url() + "/health"); }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  pid_t pid() const { return pid_; }

 private:
  int port_;
  pid_t pid_ = -1;
  int status_ = -1;
};

int run_node(const std::string& env, const std::string& args) {
  const std::string cmd = "cd '" + server_tests().string() + "' && " + env + " node " + args;
  std::printf("+ %s\n", cmd.c_str());
  std::fflush(stdout);
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

class ServerE2E : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::system("node --version > /dev/null 2>&1") != 0) GTEST_SKIP() << "node is not installed";
    if (!fs::exists(server_tests() / "node_modules" / "openai"))
      GTEST_SKIP() << "tests/server/node_modules is missing: run `npm ci --prefix tests/server`";
    const std::string help = "'" + test::uma_binary().string() + "' serve --help > /dev/null 2>&1";
    if (std::system(help.c_str()) != 0)
      GTEST_SKIP() << "this uma has no `serve` command: add include(cmake/web.cmake) to CMakeLists.txt";
    stories_ = test::shared_dir() / "models" / "stories260K.gguf";
    qwen_ = test::shared_dir() / "fixtures" / "qwen2" / "qwen2-f32.gguf";
    if (!fs::exists(stories_) || !fs::exists(qwen_)) GTEST_SKIP() << "missing models under " << test::shared_dir();
  }
  fs::path stories_, qwen_;
};

TEST_F(ServerE2E, OpenAIClient) {
  ServerProcess stories(stories_, {"--parallel", "4", "--ctx", "512", "-t", "1", "--characters",
                                   characters_dir().string()});
  ServerProcess qwen(qwen_, {"--parallel", "4", "--ctx", "512", "-t", "1"});
  ASSERT_TRUE(stories.up() && qwen.up()) << "the servers did not start";
  EXPECT_EQ(run_node("UMA_STORIES_URL=" + stories.url() + " UMA_QWEN_URL=" + qwen.url(), "--test openai.test.mjs"), 0);
  EXPECT_EQ(stories.stop(), 0) << "SIGTERM should end the server cleanly";
  EXPECT_EQ(qwen.stop(), 0);
}

TEST_F(ServerE2E, LoadTest) {
  ServerProcess server(stories_, {"--parallel", "16", "--ctx", "256", "-t", "1"});
  ASSERT_TRUE(server.up()) << "the server did not start";
  EXPECT_EQ(run_node("UMA_URL=" + server.url() + " UMA_PID=" + std::to_string(server.pid()) +
                         " UMA_LOAD_SECONDS=150",
                     "load.mjs"),
            0);
  EXPECT_EQ(server.stop(), 0);
}

TEST_F(ServerE2E, WebPageInChromium) {
  if (!fs::exists("/usr/bin/chromium")) GTEST_SKIP() << "no /usr/bin/chromium: apt-get install -y chromium";
  if (!fs::exists(server_tests() / "node_modules" / "playwright-core"))
    GTEST_SKIP() << "playwright-core missing: run `npm ci --prefix tests/server`";
  ServerProcess server(stories_, {"--parallel", "2", "--ctx", "512", "-t", "1", "--characters",
                                  characters_dir().string()});
  ASSERT_TRUE(server.up()) << "the server did not start";
  const fs::path shot = fs::path(UMA_BINARY_DIR) / "server-web.png";
  fs::remove(shot);
  EXPECT_EQ(run_node("UMA_URL=" + server.url() + " UMA_SCREENSHOT='" + shot.string() + "'", "browser.mjs"), 0);
  EXPECT_TRUE(fs::exists(shot));
}

}  // namespace
}  // namespace uma
