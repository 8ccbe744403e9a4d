"""The Ruby that scripts/check.py runs in Mastodon on the worker, run here by a real Ruby
against stand-ins for what Mastodon provides (ActionMailer's settings, Sidekiq's process
set, the mail gem). Skipped where no `ruby` is installed (Debian: apt-get install ruby).

The stand-ins hold a real-looking login and password: they must never reach the output.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from scripts import check

RUBY = shutil.which("ruby")
pytestmark = pytest.mark.skipif(RUBY is None, reason="no ruby here (apt-get install ruby)")

LOGIN, PASSWORD = "AKIAEXAMPLELOGIN0000", "BExampleSmtpPassword/derived+from+key="

# What Rails and ActiveSupport would provide: present?, ActionMailer's class-level settings.
PRELUDE = f"""
class Object
  def present?
    respond_to?(:empty?) ? !empty? : !!self
  end

  def presence
    present? ? self : nil
  end
end

module ActionMailer
  class Base
    def self.smtp_settings
      {{ address: "email-smtp.us-east-1.amazonaws.com", port: 587, user_name: "{LOGIN}",
        password: "{PASSWORD}", authentication: "plain", enable_starttls_auto: true, tls: nil }}
    end

    def self.delivery_method
      :smtp
    end

    def self.default_params
      {{ from: "notifications@social.example.com" }}
    end
  end
end
"""

SIDEKIQ_API = """
module Sidekiq
  class Process
    def initialize(attributes, quiet)
      @attributes, @quiet = attributes, quiet
    end

    def [](key)
      @attributes[key]
    end

    def stopping?
      @quiet
    end
  end

  class ProcessSet
    include Enumerable

    # As Sidekiq's: with true (the default) it first prunes dead processes, a write to Redis.
    def initialize(clean_plz = true)
      raise "ProcessSet cleanup writes to Redis" if clean_plz
    end

    def each
      yield Process.new({ "hostname" => "worker-1", "queues" => %w[default mailers scheduler] }, false)
      yield Process.new({ "hostname" => "worker-0", "queues" => %w[scheduler] }, true)
    end
  end
end
"""

# The mail gem as far as the test mail uses it; the SMTP server's reply is SES's shape.
MAIL = """
require "net/smtp"
Response = Struct.new(:status, :string)

class Mail
  attr_accessor :from, :to, :subject, :body

  def self.new
    super
  end

  def delivery_method(method = nil, settings = nil)
    if method
      raise "not smtp" unless method == :smtp
      raise "no return_response" unless settings[:return_response]
      @settings = settings
    end
    self
  end

  def deliver!(message)
    raise "no sender" if message.from.to_s.empty?
    if ENV["SMTP_REFUSES"]
      # As Net::SMTP does on a refusal: an error whose response holds the reply.
      raise Net::SMTPFatalError.new(Net::SMTP::Response.parse(ENV["SMTP_REFUSES"]))
    end
    STDERR.puts "sent to #{message.to} as #{@settings[:user_name]}"
    Response.new("250", "250 Ok 0100018c-test-000000\\n")
  end
end
"""


def _run(tmp_path: Path, code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sidekiq").mkdir(exist_ok=True)
    (tmp_path / "sidekiq" / "api.rb").write_text(SIDEKIQ_API)
    script = tmp_path / "runner.rb"
    script.write_text(PRELUDE + MAIL + code)
    return subprocess.run(
        [str(RUBY), "-I", str(tmp_path), str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_the_facts_name_the_mail_settings_and_live_processes_without_a_secret(tmp_path):
    ran = _run(tmp_path, check.SERVER_FACTS_RUBY)

    assert ran.returncode == 0, ran.stderr
    assert LOGIN not in ran.stdout and PASSWORD not in ran.stdout
    facts = check.runner_result(ran.stdout)
    assert facts is not None
    assert facts["address"] == "email-smtp.us-east-1.amazonaws.com" and facts["port"] == "587"
    assert facts["user_name"] is True and facts["password"] is True
    assert facts["starttls"] is True and facts["tls"] is False and facts["delivery_method"] == "smtp"
    assert facts["processes"] == [
        {"hostname": "worker-1", "queues": ["default", "mailers", "scheduler"], "quiet": False},
        {"hostname": "worker-0", "queues": ["scheduler"], "quiet": True},
    ]


def test_the_test_mail_goes_to_the_address_given_and_reports_the_reply(tmp_path):
    ran = _run(
        tmp_path,
        check.TEST_MAIL_RUBY,
        {check.MAIL_TO_ENV: "admin@example.org", "SMTP_FROM_ADDRESS": "notifications@social.example.com"},
    )

    assert ran.returncode == 0, ran.stderr
    assert "sent to admin@example.org" in ran.stderr
    assert PASSWORD not in ran.stdout and LOGIN not in ran.stdout
    assert check.runner_result(ran.stdout) == {"status": "250", "reply": "250 Ok 0100018c-test-000000"}
    assert json.dumps(check.runner_result(ran.stdout))  # one JSON document


def test_the_result_line_is_found_among_rails_own_output():
    output = "W, deprecation\n" + check.RESULT_MARK + '{"a": 1}\nI, bye\n'
    assert check.runner_result(output) == {"a": 1}
    assert check.runner_result("no mark here\n") is None
    assert check.runner_result(check.RESULT_MARK + "{not json\n") is None


def test_an_smtp_refusal_is_reported_by_class_message_and_reply_code_without_a_secret(tmp_path):
    refusal = f"535 Authentication Credentials Invalid for {LOGIN}"  # were a server to echo the login
    env = {check.MAIL_TO_ENV: "admin@example.org", "SMTP_REFUSES": refusal}
    ran = _run(tmp_path, check.TEST_MAIL_RUBY, env)

    assert ran.returncode == 0, ran.stderr  # rescued: no backtrace
    assert LOGIN not in ran.stdout and PASSWORD not in ran.stdout
    found = check.runner_result(ran.stdout)
    assert found == {
        "error": "Net::SMTPFatalError",
        "message": "535 Authentication Credentials Invalid for [hidden]",
        "status": "535",
    }


def test_facts_that_cannot_be_read_are_an_error_document_without_credentials(tmp_path):
    failing = check.SERVER_FACTS_RUBY.replace(
        "smtp = ActionMailer::Base.smtp_settings",
        'raise IOError, "cannot reach redis://default:s3cret@cache.internal:6379 as ' + LOGIN + '"',
    )
    ran = _run(tmp_path, failing)

    assert ran.returncode == 0, ran.stderr
    assert "s3cret" not in ran.stdout and LOGIN not in ran.stdout
    assert check.runner_result(ran.stdout) == {
        "error": "IOError",
        "message": "cannot reach redis://[hidden]@cache.internal:6379 as [hidden]",
    }
